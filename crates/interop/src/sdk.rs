//! The Python SDK's suite (`sdk/python`): ruff and mypy, a wheel and an sdist built, the
//! package installed from its source directory into a fresh virtualenv (the README's
//! example runs there, inside the pytest suite), and the pytest suite against this
//! cluster with the built wheel installed, one row per test.

use std::path::Path;
use std::time::Instant;

use serde_json::{Value, json};
use tokio::process::Command;

use crate::report::Outcome;
use crate::{Paths, extend, run_script};

/// Runs the suite; one outcome per step and per test.
pub(crate) async fn run(paths: &Paths, mut suite: Value) -> Vec<Outcome> {
    let sdk = match paths.krate.join("../../sdk/python").canonicalize() {
        Ok(dir) => dir,
        Err(e) => return vec![Outcome::failed("(sdk/python)", e.to_string())],
    };
    let python = match testkit::python_venv(
        &paths.krate.join("python/requirements-sdk.txt"),
        &paths.out.join("venv-sdk"),
    )
    .await
    {
        Ok(python) => python,
        Err(e) => return vec![Outcome::failed("(virtualenv)", format!("{e:#}"))],
    };
    let mut outcomes = Vec::new();
    let mut step = async |name: &str, program: &Path, args: &[&str]| {
        let o = run_step(name, program, args, &sdk).await;
        o.progress();
        let ok = o.ok;
        outcomes.push(o);
        ok
    };
    step("ruff: lint", &python, &["-m", "ruff", "check", "."]).await;
    step(
        "ruff: format",
        &python,
        &["-m", "ruff", "format", "--check", "."],
    )
    .await;
    step("mypy --strict", &python, &["-m", "mypy"]).await;
    let dist = paths.out.join("sdk-dist");
    let _ = std::fs::remove_dir_all(&dist);
    let dist_arg = dist.display().to_string();
    let built = step(
        "a wheel and an sdist build",
        &python,
        &["-m", "build", "--no-isolation", "--outdir", &dist_arg, "."],
    )
    .await;
    let wheel = std::fs::read_dir(&dist).ok().and_then(|entries| {
        entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "whl"))
    });
    let sdist = std::fs::read_dir(&dist).ok().is_some_and(|entries| {
        entries
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().ends_with(".tar.gz"))
    });
    let Some(wheel) = wheel.filter(|_| built && sdist) else {
        outcomes.push(Outcome::failed(
            "(pytest)",
            "not run: the wheel or the sdist is missing",
        ));
        return outcomes;
    };
    // The suite imports the package from the wheel just built, not from the sources.
    let wheel_arg = wheel.display().to_string();
    step(
        "the wheel installs",
        &python,
        &[
            "-m",
            "pip",
            "install",
            "-q",
            "--force-reinstall",
            "--no-deps",
            &wheel_arg,
        ],
    )
    .await;
    // `pip install sdk/python` into a fresh virtualenv, as a user would.
    let fresh = paths.out.join("sdk-fresh");
    let fresh_arg = fresh.display().to_string();
    let fresh_python = fresh.join("bin/python");
    let sdk_arg = sdk.display().to_string();
    let installed = step(
        "a fresh virtualenv",
        Path::new("python3"),
        &["-m", "venv", "--clear", &fresh_arg],
    )
    .await
        && step(
            "pip install sdk/python into it",
            &fresh_python,
            &["-m", "pip", "install", "-q", &sdk_arg],
        )
        .await;
    if installed {
        extend(&mut suite, json!({"fresh_python": fresh_python}));
    }
    let mut cmd = Command::new(&python);
    cmd.args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"])
        .current_dir(&sdk)
        .env("INTEROP_LINES", "1");
    outcomes.extend(run_script("sdk", cmd, &suite, paths).await);
    outcomes
}

/// Runs `program args` in `dir`; passes when it exits 0 (the tail of its output is the
/// detail when it does not).
async fn run_step(name: &str, program: &Path, args: &[&str], dir: &Path) -> Outcome {
    let started = Instant::now();
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .kill_on_drop(true)
        .output()
        .await;
    let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let mut outcome = match out {
        Ok(out) if out.status.success() => Outcome::passed(name, ""),
        Ok(out) => {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let tail: Vec<&str> = text.lines().rev().take(6).collect();
            Outcome::failed(
                name,
                format!(
                    "{} ({})",
                    tail.into_iter().rev().collect::<Vec<_>>().join(" | "),
                    out.status
                ),
            )
        }
        Err(e) => Outcome::failed(name, format!("cannot run {}: {e}", program.display())),
    };
    outcome.ms = ms;
    outcome
}
