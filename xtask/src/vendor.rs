//! `cargo xtask vendor …`: the carried engineioxide/socketioxide changes as a patch series.
//!
//! `vendor/UPSTREAM` pins each carried crate's crates.io version; `vendor/patches/<crate>/`
//! holds our changes to it as `git format-patch` files, applied in file-name order. The
//! pristine sources come from crates.io through `cargo vendor` (never copied by hand); the
//! applied result is what `vendor/<crate>/` must be, byte for byte, less cargo's bookkeeping
//! files. Work happens in `<target>/vendor-series/`, one git repository per crate with one
//! commit per patch, so a maintainer edits the series with ordinary git (`rebase -i`,
//! `commit --fixup`) and exports it back.
//!
//! | command | does |
//! |---|---|
//! | `check` | applies the series to pristine sources; fails unless `vendor/` is exactly that |
//! | `apply` | applies the series and writes the result to `vendor/` |
//! | `unpack` | leaves the work repositories for editing, and prints where they are |
//! | `export` | writes the work repositories' commits back as the series, then `apply` |
//! | `test` | runs upstream's own test suites on the patched crates |

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// Files of a crates.io package that cargo adds for its own use: not part of the sources.
const BOOKKEEPING: &[&str] = &[
    ".cargo-checksum.json",
    ".cargo_vcs_info.json",
    "Cargo.toml.orig",
    "Cargo.lock",
];

/// The tag that marks the pristine sources in a work repository.
const PRISTINE: &str = "pristine";

/// Runs `cargo xtask vendor <command>`.
pub(crate) fn run(command: &str) -> anyhow::Result<()> {
    match command {
        "check" => check(),
        "apply" => {
            for krate in upstream()? {
                let applied = build(&krate)?;
                replace_dir(&applied, &vendor_dir(&krate.name))?;
                eprintln!("vendor/{} written from the series", krate.name);
            }
            Ok(())
        }
        "unpack" => {
            for krate in upstream()? {
                let dir = build(&krate)?;
                eprintln!(
                    "{}: {} (one commit per patch on tag `{PRISTINE}`)",
                    krate.name,
                    dir.display()
                );
            }
            Ok(())
        }
        "export" => export(),
        "test" => test(),
        _ => bail!("unknown vendor command {command:?} (check | apply | unpack | export | test)"),
    }
}

/// Fails unless `vendor/<crate>` is the pristine package with the series applied.
pub(crate) fn check() -> anyhow::Result<()> {
    let mut problems = Vec::new();
    for krate in upstream()? {
        let applied = build(&krate)?;
        let n = problems.len();
        compare(
            &applied,
            &vendor_dir(&krate.name),
            Path::new(""),
            &mut problems,
        )?;
        let count = patches(&krate.name)?.len();
        if problems.len() == n {
            eprintln!(
                "vendor/{}: {} {} + {count} patches, exactly",
                krate.name, krate.name, krate.version
            );
        }
    }
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("  {p}");
        }
        bail!(
            "vendor/ is not the pristine sources with vendor/patches applied ({} differences): \
             change vendor/ only through the series (`cargo xtask vendor unpack`, edit, \
             `cargo xtask vendor export`)",
            problems.len()
        );
    }
    Ok(())
}

/// Upstream's own tests (they ship in the crates.io packages) on the patched crates, in a
/// workspace of their own so their dev-dependencies never enter ours.
pub(crate) fn test() -> anyhow::Result<()> {
    let crates = upstream()?;
    let ws = work_root().join("upstream-tests");
    if ws.exists() {
        std::fs::remove_dir_all(&ws).with_context(|| format!("clearing {}", ws.display()))?;
    }
    std::fs::create_dir_all(&ws)?;
    let mut members = Vec::new();
    for krate in &crates {
        copy_dir(&vendor_dir(&krate.name), &ws.join(&krate.name))?;
        members.push(format!("{:?}", krate.name));
    }
    std::fs::write(
        ws.join("Cargo.toml"),
        format!(
            "# Written by `cargo xtask vendor test`: upstream's tests on the patched crates.\n\
             [workspace]\nresolver = \"2\"\nmembers = [{}]\n",
            members.join(", ")
        ),
    )?;
    // Our lock file as the starting point: the same versions as the product, so the shared
    // target directory already holds most of what this builds.
    std::fs::copy("Cargo.lock", ws.join("Cargo.lock")).context("copying Cargo.lock")?;
    let status = Command::new(cargo())
        .current_dir(&ws)
        .env("CARGO_TARGET_DIR", target_dir())
        .args(["test", "--workspace", "--all-features", "--quiet"])
        .status()
        .context("running upstream's tests")?;
    if !status.success() {
        bail!("upstream's tests failed on the patched crates ({status})");
    }
    Ok(())
}

/// One carried crate: its crates.io name and pinned version.
#[derive(Debug)]
struct Upstream {
    name: String,
    version: String,
}

/// `vendor/UPSTREAM`: `name version` per line, `#` comments.
fn upstream() -> anyhow::Result<Vec<Upstream>> {
    let text = std::fs::read_to_string("vendor/UPSTREAM").context("reading vendor/UPSTREAM")?;
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(
            |line| match line.split_whitespace().collect::<Vec<_>>()[..] {
                [name, version] => Ok(Upstream {
                    name: name.to_owned(),
                    version: version.to_owned(),
                }),
                _ => bail!("vendor/UPSTREAM: expected `name version`, got {line:?}"),
            },
        )
        .collect()
}

/// Pristine sources of `krate` with the series applied, in a git work repository.
fn build(krate: &Upstream) -> anyhow::Result<PathBuf> {
    let pristine = fetch(krate)?;
    let dir = work_root().join(&krate.name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    copy_dir(&pristine, &dir)?;
    for file in BOOKKEEPING {
        let path = dir.join(file);
        if path.exists() {
            std::fs::remove_file(&path)?;
        }
    }
    git(&dir, &["init", "--quiet"])?;
    git(&dir, &["add", "--all"])?;
    let message = format!("{} {} as published on crates.io", krate.name, krate.version);
    git(&dir, &["commit", "--quiet", "--message", &message])?;
    git(&dir, &["tag", PRISTINE])?;
    for patch in patches(&krate.name)? {
        let path = std::fs::canonicalize(&patch)?;
        let path = path.to_string_lossy();
        git(&dir, &["am", "--quiet", "--keep-cr", &path])
            .with_context(|| format!("applying {}", patch.display()))?;
    }
    Ok(dir)
}

/// The crates.io package of `krate`, through `cargo vendor` (cargo's own download and
/// checksum check).
fn fetch(krate: &Upstream) -> anyhow::Result<PathBuf> {
    let dir = work_root().join("fetch").join(&krate.name);
    let out = dir.join("vendored");
    let package = out.join(format!("{}-{}", krate.name, krate.version));
    if package.join("Cargo.toml").exists() {
        return Ok(package);
    }
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"fetch-{0}\"\nversion = \"0.0.0\"\nedition = \"2021\"\npublish = false\n\
             [lib]\npath = \"lib.rs\"\n[dependencies]\n{0} = \"={1}\"\n[workspace]\n",
            krate.name, krate.version
        ),
    )?;
    std::fs::write(dir.join("lib.rs"), "")?;
    let output = Command::new(cargo())
        .current_dir(&dir)
        .args(["vendor", "--quiet", "--versioned-dirs", "vendored"])
        .output()
        .context("running cargo vendor")?;
    if !output.status.success() {
        bail!(
            "cargo vendor for {} {} failed: {}",
            krate.name,
            krate.version,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    if !package.exists() {
        bail!("cargo vendor did not produce {}", package.display());
    }
    Ok(package)
}

/// Writes the work repositories' commits after `pristine` back as the series.
fn export() -> anyhow::Result<()> {
    for krate in upstream()? {
        let dir = work_root().join(&krate.name);
        if !dir.join(".git").exists() {
            bail!(
                "no work repository at {} (run `cargo xtask vendor unpack` first)",
                dir.display()
            );
        }
        let status = Command::new("git")
            .current_dir(&dir)
            .args(["status", "--porcelain"])
            .output()?;
        if !status.stdout.is_empty() {
            bail!("{}: uncommitted changes; commit them first", dir.display());
        }
        let out = PathBuf::from("vendor/patches").join(&krate.name);
        if out.exists() {
            std::fs::remove_dir_all(&out)?;
        }
        std::fs::create_dir_all(&out)?;
        let out = std::fs::canonicalize(&out)?;
        let out = out.to_string_lossy();
        git(
            &dir,
            &[
                "format-patch",
                "--quiet",
                "--no-signature",
                "--zero-commit",
                "--no-stat",
                "--full-index",
                "--output-directory",
                &out,
                &format!("{PRISTINE}..HEAD"),
            ],
        )?;
    }
    run("apply")
}

/// The series of `krate`, in order.
fn patches(krate: &str) -> anyhow::Result<Vec<PathBuf>> {
    let dir = PathBuf::from("vendor/patches").join(krate);
    let mut files = Vec::new();
    if dir.exists() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "patch") {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Lists every file that differs between `a` (the applied series) and `b` (vendor/).
fn compare(a: &Path, b: &Path, rel: &Path, problems: &mut Vec<String>) -> anyhow::Result<()> {
    let names = |dir: &Path| -> anyhow::Result<BTreeSet<String>> {
        let mut set = BTreeSet::new();
        if dir.is_dir() {
            for entry in std::fs::read_dir(dir)? {
                let name = entry?.file_name().to_string_lossy().into_owned();
                if name != ".git" {
                    set.insert(name);
                }
            }
        }
        Ok(set)
    };
    let (left, right) = (names(a)?, names(b)?);
    for name in left.union(&right) {
        let (pa, pb, pr) = (a.join(name), b.join(name), rel.join(name));
        match (left.contains(name), right.contains(name)) {
            (true, false) => problems.push(format!("missing from vendor/: {}", pr.display())),
            (false, true) => problems.push(format!("not from the series: {}", pr.display())),
            _ if pa.is_dir() && pb.is_dir() => compare(&pa, &pb, &pr, problems)?,
            _ => {
                if std::fs::read(&pa)? != std::fs::read(&pb)? {
                    problems.push(format!("differs from the series: {}", pr.display()));
                }
            }
        }
    }
    Ok(())
}

fn vendor_dir(krate: &str) -> PathBuf {
    PathBuf::from("vendor").join(krate)
}

/// Cargo's target directory, absolute (commands here run in other directories).
pub(crate) fn target_dir() -> PathBuf {
    let dir =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| PathBuf::from("target"), PathBuf::from);
    if dir.is_absolute() {
        dir
    } else {
        std::env::current_dir().map_or(dir.clone(), |cwd| cwd.join(&dir))
    }
}

fn work_root() -> PathBuf {
    target_dir().join("vendor-series")
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}

/// Runs git in `dir` with a fixed identity and date, so the series is reproducible.
fn git(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("git")
        .current_dir(dir)
        .args(["-c", "core.autocrlf=false", "-c", "commit.gpgsign=false"])
        .args(args)
        .env("GIT_AUTHOR_NAME", "Roomcast")
        .env("GIT_AUTHOR_EMAIL", "maintainers@roomcast.invalid")
        .env("GIT_COMMITTER_NAME", "Roomcast")
        .env("GIT_COMMITTER_EMAIL", "maintainers@roomcast.invalid")
        .env("GIT_AUTHOR_DATE", "2026-12-04T00:00:00Z")
        .env("GIT_COMMITTER_DATE", "2026-12-04T00:00:00Z")
        .output()
        .with_context(|| format!("running git {}", args.join(" ")))?;
    if !output.status.success() {
        bail!(
            "git {} failed in {}: {}",
            args.join(" "),
            dir.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Replaces `to` with a copy of `from` (less `.git`).
fn replace_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    if to.exists() {
        std::fs::remove_dir_all(to).with_context(|| format!("clearing {}", to.display()))?;
    }
    copy_dir(from, to)
}

/// Copies a directory tree, leaving out `.git`.
fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        if entry.file_name() == ".git" {
            continue;
        }
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if entry.file_type()?.is_dir() {
            copy_dir(&src, &dst)?;
        } else {
            std::fs::copy(&src, &dst)
                .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
        }
    }
    Ok(())
}
