//! The report: a table on stdout, JSON and Markdown under `<target>/bench/`, SVG plots,
//! and in a full run `docs/benchmarks.md`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use plotters::prelude::*;

use crate::scenarios::Point;
use crate::{Results, StackResults};

pub(crate) fn today() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

pub(crate) fn target_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent()?.parent().map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("target"))
}

pub(crate) fn docs_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs")
}

pub(crate) fn write(results: &Results, quick: bool) -> anyhow::Result<()> {
    let out = target_dir().join("bench");
    std::fs::create_dir_all(&out)?;
    let json_path = out.join(format!("results-{}.json", results.plan.mode));
    std::fs::write(&json_path, serde_json::to_vec_pretty(results)?)?;
    plot(
        &out.join("fanout.svg"),
        "Fan-out: p99 latency vs publish rate",
        results,
        |s| &s.fanout,
        true,
    )?;
    plot(
        &out.join("targeted.svg"),
        "Targeted: p99 latency vs message rate",
        results,
        |s| &s.targeted,
        false,
    )?;
    let md = markdown(results, if quick { "" } else { "bench/" });
    std::fs::write(out.join("report.md"), &md)?;
    println!("{}", summary_table(results));
    println!("results: {}", json_path.display());
    if !quick {
        let docs = docs_dir();
        std::fs::create_dir_all(docs.join("bench"))?;
        std::fs::copy(out.join("fanout.svg"), docs.join("bench/fanout.svg"))?;
        std::fs::copy(out.join("targeted.svg"), docs.join("bench/targeted.svg"))?;
        std::fs::copy(&json_path, docs.join("bench/results.json"))?;
        // The scale run writes its own section; a full run keeps it.
        let path = docs.join("benchmarks.md");
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        let md = match crate::scale_report::section(&current) {
            Some(scale) => format!("{}\n{scale}\n", md.trim_end()),
            None => md,
        };
        std::fs::write(&path, &md).context("writing docs/benchmarks.md")?;
        println!("report: {}", docs.join("benchmarks.md").display());
    }
    Ok(())
}

fn find<'a>(r: &'a Results, key: &str) -> Option<&'a StackResults> {
    r.stacks.iter().find(|s| s.key == key)
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.1}×", a / b)
    } else {
        "n/a".into()
    }
}

/// Mean node CPU per delivery at `rate` over the runs that passed.
fn cpu_at(points: &[Point], rate: u64) -> Option<f64> {
    let runs: Vec<f64> = points
        .iter()
        .filter(|p| p.rate == rate && p.pass)
        .map(|p| p.node_cpu_us_per_delivery)
        .collect();
    (!runs.is_empty()).then(|| runs.iter().sum::<f64>() / runs.len() as f64)
}

fn summary_table(r: &Results) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "\n{:<36} {:>12} {:>14} {:>12} {:>14} {:>12}",
        "stack", "fan-out max", "targeted max", "storm /s", "idle KiB/conn", "redis B/msg"
    );
    for s in &r.stacks {
        let idle = s.idle.first().map_or(0.0, |i| i.kib_per_connection);
        let bytes = s
            .redis_bytes_per_msg
            .iter()
            .map(|(n, b)| format!("{n}:{b:.0}"))
            .collect::<Vec<_>>()
            .join(" ");
        let _ = writeln!(
            t,
            "{:<36} {:>10}/s {:>12}/s {:>12.0} {:>14.1} {:>12}",
            s.name,
            s.fanout_best,
            s.targeted_best,
            s.storm.as_ref().map_or(0.0, |x| x.per_second),
            idle,
            bytes
        );
    }
    if let Some(s) = find(r, "roomcast") {
        let _ = writeln!(
            t,
            "{:<36} {:>10}/s",
            "roomcast (publisher SDK path)", s.fanout_sdk_best
        );
        let _ = writeln!(
            t,
            "{:<36} {:>10}/s",
            "roomcast (client publish path)", s.fanout_client_best
        );
    }
    t
}

fn points_table(md: &mut String, points: &[Point]) {
    let _ = writeln!(
        md,
        "| rate msg/s | run | sent/s | deliveries | loss | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | node CPU µs/delivery | node CPU % (each) | Redis CPU % | generator CPU % |"
    );
    let _ = writeln!(
        md,
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"
    );
    for p in points {
        let cpus = p
            .node_cpu_pct
            .iter()
            .map(|c| format!("{c:.0}"))
            .collect::<Vec<_>>()
            .join(" / ");
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} | {} | {:.0} | {:.0} |",
            p.rate,
            p.run,
            p.achieved_rate,
            p.delivered,
            p.loss,
            p.latency.p50_ms,
            p.latency.p90_ms,
            p.latency.p99_ms,
            p.latency.p999_ms,
            p.latency.max_ms,
            p.node_cpu_us_per_delivery,
            cpus,
            p.redis_cpu_pct,
            p.generator_cpu_pct
        );
    }
}

fn markdown(r: &Results, img: &str) -> String {
    let mut md = String::new();
    let plan = &r.plan;
    let _ = writeln!(md, "# Benchmarks\n");
    let _ = writeln!(
        md,
        "Generated by `cargo xtask bench{}` on {} ({:.0} s). Machine: {}.\n",
        if plan.mode == "quick" { " --quick" } else { "" },
        r.date,
        r.seconds,
        r.machine
    );
    let _ = writeln!(md, "## Method\n");
    let _ = writeln!(
        md,
        "All stacks run on this machine in one run, {} nodes and one `redis-server` each (a fresh Redis per stack), driven by the same load generator (`crates/bench`): raw Engine.IO v4 / Socket.IO v5 frames over WebSocket, one task per socket. Every stack serves the same contract: namespace `/`; each socket joins the room in its handshake `auth.room`; on `publish {{room, data}}` the server emits `msg` with `data` to that room, cluster-wide. Publishers are {} sockets, one per node, emitting in turn; payloads are about 100 bytes and carry their send time, so latency is publish → client receive on one clock.\n",
        plan.nodes, plan.nodes
    );
    let _ = writeln!(
        md,
        "- **Stacks**: Socket.IO's Node server with `@socket.io/redis-adapter` (`bench/peers/node`, lockfile committed); socketioxide with `socketioxide-redis` (`bench/peers/socketioxide-redis`); Roomcast as `roomcast-bench-node`, the `gateway` library with the contract's handlers (same adapter and Redis bus as production). Roomcast is also measured on its own publish path: the publisher SDK straight into Redis. The machine's ceiling, when `../shared/peer-raw` is present: a minimal fan-out server that is not Socket.IO (no acks, recovery or polling; it writes one shared frame to every socket), built at bench time; \"× ceiling\" is a stack's CPU per delivery divided by peer-raw's."
    );
    let _ = writeln!(
        md,
        "- **Fan-out**: {} subscribers in one room spread over the nodes; the rate is swept upwards, {} s per point, {} run(s) per point, until p99 > 100 ms or a message is lost. The best rate is the highest whose every run passed.",
        plan.subscribers, plan.point_secs, plan.repeats
    );
    let _ = writeln!(
        md,
        "- **Targeted**: {} users each in their own `user:` room; each message goes to one user; swept the same way. Redis output bytes per message are read from `INFO stats` at {} msg/s with {} and with 5 nodes.",
        plan.targeted_users, plan.bytes_rate, plan.nodes
    );
    let _ = writeln!(
        md,
        "- **CPU**: user+system time of each process from `/proc/<pid>/stat` over each point; node CPU per delivery is the nodes' total divided by deliveries. The generator's own CPU is reported: when it nears 100 % per core it, not the server, is the limit."
    );
    let _ = writeln!(
        md,
        "- **Idle memory**: one node, RSS (`/proc/<pid>/status`) before and after opening the sockets (after one warm-up socket), over several 127.0.0.x source addresses."
    );
    let _ = writeln!(
        md,
        "- The machine has 2 cores shared by the nodes, Redis and the generator; absolute numbers are low, the comparison is what matters.\n"
    );

    let _ = writeln!(md, "## Summary\n");
    // The headline: CPU per delivery at the highest fan-out rate every stack passed.
    let common = r
        .stacks
        .iter()
        .map(|s| s.fanout_best)
        .filter(|&b| b > 0)
        .min()
        .unwrap_or(0);
    let _ = writeln!(
        md,
        "| stack | node CPU µs/delivery (fan-out at {common} msg/s) | × ceiling | fan-out best rate (msg/s, {} subs) | targeted best rate (msg/s) | connect storm (conn/s) | idle KiB/conn | Redis bytes/msg (3 → 5 nodes) |",
        plan.subscribers
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---|");
    // The machine's ceiling: every stack's CPU per delivery as a multiple of peer-raw's.
    let ceiling = find(r, "peer-raw").and_then(|p| cpu_at(&p.fanout, common));
    let times = |points: &[Point]| match (cpu_at(points, common), ceiling) {
        (Some(c), Some(top)) if top > 0.0 => format!("{:.2}×", c / top),
        _ => "—".into(),
    };
    for s in &r.stacks {
        let idle = s
            .idle
            .iter()
            .map(|i| format!("{:.1} @{}", i.kib_per_connection, i.connections))
            .collect::<Vec<_>>()
            .join(", ");
        let bytes = s
            .redis_bytes_per_msg
            .iter()
            .map(|(_, b)| format!("{b:.0}"))
            .collect::<Vec<_>>()
            .join(" → ");
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {:.0} | {} | {} |",
            s.name,
            cpu_at(&s.fanout, common).map_or("—".into(), |c| format!("{c:.2}")),
            times(&s.fanout),
            s.fanout_best,
            s.targeted_best,
            s.storm.as_ref().map_or(0.0, |x| x.per_second),
            idle,
            bytes
        );
    }
    if let Some(s) = find(r, "roomcast") {
        let _ = writeln!(
            md,
            "| roomcast, publisher SDK path | {} | {} | {} | | | | |",
            cpu_at(&s.fanout_sdk, common).map_or("—".into(), |c| format!("{c:.2}")),
            times(&s.fanout_sdk),
            s.fanout_sdk_best
        );
        let _ = writeln!(
            md,
            "| roomcast, client publish path | {} | {} | {} | | | | |",
            cpu_at(&s.fanout_client, common).map_or("—".into(), |c| format!("{c:.2}")),
            times(&s.fanout_client),
            s.fanout_client_best
        );
    }
    if let Some(sdk) = &r.sdk {
        let _ = writeln!(
            md,
            "\nPublisher SDK throughput into Redis: **{:.0} messages/s** ({} messages in {:.2} s, 512 in flight).",
            sdk.per_second, sdk.messages, sdk.seconds
        );
    }

    let _ = writeln!(md, "\n## Against the targets\n");
    if let (Some(rc), Some(node), Some(sx)) = (
        find(r, "roomcast"),
        find(r, "node"),
        find(r, "socketioxide"),
    ) {
        let (rcf, nf, sf) = (
            rc.fanout_best as f64,
            node.fanout_best as f64,
            sx.fanout_best as f64,
        );
        let _ = writeln!(md, "| target | measured | met |\n|---|---|---|");
        // Node's stack may pass no fan-out point at all on this machine; any passing
        // rate is then more than twice its zero.
        let _ = writeln!(
            md,
            "| fan-out best rate ≥ 2× Node | {} vs {}{} | {} |",
            rc.fanout_best,
            node.fanout_best,
            if nf > 0.0 {
                format!(" = {}", ratio(rcf, nf))
            } else {
                " (Node passes no point)".into()
            },
            yes(rcf > 0.0 && rcf >= 2.0 * nf)
        );
        let _ = writeln!(
            md,
            "| fan-out best rate ≥ 1.5× socketioxide-redis | {} vs {} = {} | {} |",
            rc.fanout_best,
            sx.fanout_best,
            ratio(rcf, sf),
            yes(sf > 0.0 && rcf >= 1.5 * sf)
        );
        // CPU per delivery at every rate both passed, and the verdict at the highest.
        let common: Vec<u64> = sx
            .fanout
            .iter()
            .filter(|p| p.pass && cpu_at(&rc.fanout, p.rate).is_some())
            .map(|p| p.rate)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let pairs: Vec<(u64, f64, f64)> = common
            .iter()
            .filter_map(|&r| Some((r, cpu_at(&rc.fanout, r)?, cpu_at(&sx.fanout, r)?)))
            .collect();
        match pairs.last() {
            Some(&(top, a, b)) => {
                let all: Vec<String> = pairs
                    .iter()
                    .map(|(r, a, b)| format!("{:.2}× at {r}", a / b))
                    .collect();
                let _ = writeln!(
                    md,
                    "| node CPU per delivery ≤ 0.8× socketioxide-redis (at {top} msg/s) | {a:.2} vs {b:.2} µs = {:.2}× ({}) | {} |",
                    a / b,
                    all.join(", "),
                    yes(a <= 0.8 * b)
                );
            }
            None => {
                let _ = writeln!(
                    md,
                    "| node CPU per delivery ≤ 0.8× socketioxide-redis | no common passing rate | no |"
                );
            }
        }
        if let Some(top) = find(r, "peer-raw") {
            let pairs: Vec<String> = rc
                .fanout
                .iter()
                .filter(|p| p.run == 1)
                .filter_map(|p| {
                    let a = cpu_at(&rc.fanout, p.rate)?;
                    let c = cpu_at(&top.fanout, p.rate)?;
                    Some((p.rate, a / c))
                })
                .map(|(rate, x)| format!("{x:.2}× at {rate}"))
                .collect();
            let worst = rc
                .fanout
                .iter()
                .filter_map(|p| Some(cpu_at(&rc.fanout, p.rate)? / cpu_at(&top.fanout, p.rate)?))
                .fold(0.0, f64::max);
            let _ = writeln!(
                md,
                "| node CPU per delivery within 1.15× of the ceiling (peer-raw) | {} | {} |",
                if pairs.is_empty() {
                    "no common passing rate".into()
                } else {
                    pairs.join(", ")
                },
                yes(!pairs.is_empty() && worst <= 1.15)
            );
        }
        let lossless = r.stacks.iter().all(|s| {
            s.fanout
                .iter()
                .chain(&s.targeted)
                .all(|p| !p.pass || p.loss == 0)
        });
        let _ = writeln!(
            md,
            "| zero loss at every passing point | every stack, fan-out and targeted | {} |",
            yes(lossless)
        );
        let (rt, st) = (rc.targeted_best as f64, sx.targeted_best as f64);
        let _ = writeln!(
            md,
            "| targeted best rate ≥ 3× socketioxide-redis | {} vs {} = {} | {} |",
            rc.targeted_best,
            sx.targeted_best,
            ratio(rt, st),
            yes(st > 0.0 && rt >= 3.0 * st)
        );
        let grows = |s: &StackResults| match s.redis_bytes_per_msg.as_slice() {
            [(_, a), (_, b)] => format!("{a:.0} → {b:.0}"),
            _ => "n/a".into(),
        };
        let flat = match rc.redis_bytes_per_msg.as_slice() {
            [(_, a), (_, b)] => *b <= a * 1.2,
            _ => false,
        };
        let _ = writeln!(
            md,
            "| Redis bytes per targeted message do not grow with nodes (3 → 5) | roomcast {}; socketioxide {}; node {} | {} |",
            grows(rc),
            grows(sx),
            grows(node),
            yes(flat)
        );
        let idle = |s: &StackResults| s.idle.first().map_or(f64::MAX, |i| i.kib_per_connection);
        let each: Vec<String> = rc
            .idle
            .iter()
            .map(|i| format!("{:.1} @{}", i.kib_per_connection, i.connections))
            .collect();
        let _ = writeln!(
            md,
            "| idle memory ≤ 10 KiB per connection (at 10 000 and at the open-files limit) | {} (socketioxide {:.1}, node {:.1}) KiB | {} |",
            each.join(", "),
            idle(sx),
            idle(node),
            yes(!rc.idle.is_empty() && rc.idle.iter().all(|i| i.kib_per_connection <= 10.0))
        );
        let storm = |s: &StackResults| s.storm.as_ref().map_or(0.0, |x| x.per_second);
        let _ = writeln!(
            md,
            "| connection storm no slower than socketioxide-redis | {:.0} vs {:.0} conn/s | {} |",
            storm(rc),
            storm(sx),
            yes(storm(rc) >= storm(sx))
        );
    }

    let _ = writeln!(
        md,
        "\nWhy targets are missed and what would close them: [performance.md](performance.md).\n\n## Plots\n\n![fan-out]({img}fanout.svg)\n\n![targeted]({img}targeted.svg)\n"
    );
    for s in &r.stacks {
        let _ = writeln!(md, "## {}\n", s.name);
        let _ = writeln!(
            md,
            "### Fan-out ({} subscribers, one room)\n",
            plan.subscribers
        );
        points_table(&mut md, &s.fanout);
        if !s.fanout_sdk.is_empty() {
            let _ = writeln!(md, "\n### Fan-out, published through the publisher SDK\n");
            points_table(&mut md, &s.fanout_sdk);
        }
        if !s.fanout_client.is_empty() {
            let _ = writeln!(
                md,
                "\n### Fan-out, published by clients (client publish path)\n"
            );
            points_table(&mut md, &s.fanout_client);
        }
        let _ = writeln!(md, "\n### Targeted ({} users)\n", plan.targeted_users);
        points_table(&mut md, &s.targeted);
        if let Some(storm) = &s.storm {
            let _ = writeln!(
                md,
                "\nConnection storm: {} sockets in {:.2} s ({:.0}/s).",
                storm.connections, storm.seconds, storm.per_second
            );
        }
        for i in &s.idle {
            let _ = writeln!(
                md,
                "\nIdle: {} sockets on one node: RSS {} → {} KiB, {:.1} KiB per connection.",
                i.connections, i.rss_before_kib, i.rss_after_kib, i.kib_per_connection
            );
        }
        if let Some(note) = &s.idle_capped {
            let _ = writeln!(md, "\nIdle sockets: {note}.");
        }
        let _ = writeln!(md);
    }
    md
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "**no**" }
}

fn plot(
    path: &Path,
    title: &str,
    r: &Results,
    series: impl Fn(&StackResults) -> &Vec<Point>,
    with_sdk: bool,
) -> anyhow::Result<()> {
    let mut lines: Vec<(String, Vec<(f64, f64)>)> = r
        .stacks
        .iter()
        .map(|s| {
            (
                s.name.clone(),
                series(s)
                    .iter()
                    .filter(|p| p.run == 1)
                    .map(|p| (p.rate as f64, p.latency.p99_ms))
                    .collect(),
            )
        })
        .collect();
    if with_sdk && let Some(rc) = find(r, "roomcast") {
        lines.push((
            "roomcast (publisher SDK)".into(),
            rc.fanout_sdk
                .iter()
                .filter(|p| p.run == 1)
                .map(|p| (p.rate as f64, p.latency.p99_ms))
                .collect(),
        ));
    }
    let max_x = lines
        .iter()
        .flat_map(|(_, l)| l.iter().map(|p| p.0))
        .fold(1.0, f64::max);
    let max_y = lines
        .iter()
        .flat_map(|(_, l)| l.iter().map(|p| p.1))
        .fold(1.0, f64::max)
        .min(1000.0)
        * 1.1;
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_x * 1.05, 0.0..max_y)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("messages per second")
        .y_desc("p99 latency (ms)")
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let colors = [RED, BLUE, GREEN, MAGENTA];
    for (i, (name, line)) in lines.into_iter().enumerate() {
        let color = colors[i % colors.len()];
        chart
            .draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart
            .draw_series(line.into_iter().map(|p| Circle::new(p, 3, color.filled())))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    chart
        .draw_series(LineSeries::new(
            vec![(0.0, 100.0), (max_x * 1.05, 100.0)],
            BLACK.mix(0.3),
        ))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.3))
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}
