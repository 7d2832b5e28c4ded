//! Outcomes of the cases, the table and `summary.json`.

use std::future::Future;
use std::path::Path;
use std::time::Instant;

use serde_json::{Value, json};

/// The result of one client × case cell.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    pub(crate) case: String,
    pub(crate) ok: bool,
    /// Failed in the documented way of a known client incompatibility: shown as
    /// `known`, not counted as a failure. Any other failure of the case is a failure.
    pub(crate) known: bool,
    pub(crate) detail: String,
    pub(crate) ms: u64,
}

impl Outcome {
    /// Reads a result line a script printed: `{"case", "ok", "detail", "ms"}`.
    pub(crate) fn from_line(line: &str) -> Option<Self> {
        let v: Value = serde_json::from_str(line).ok()?;
        Some(Self {
            case: v["case"].as_str()?.to_owned(),
            ok: v["ok"].as_bool()?,
            known: false,
            detail: v["detail"].as_str().unwrap_or_default().to_owned(),
            ms: v["ms"].as_u64().unwrap_or_default(),
        })
    }

    /// Prints the one-line progress report of this case.
    pub(crate) fn progress(&self) {
        eprintln!("    {} ... {}", self.case, self.verdict());
    }

    /// `pass`, `known` (a documented client incompatibility) or `FAIL`.
    pub(crate) fn verdict(&self) -> &'static str {
        match (self.ok, self.known) {
            (true, _) => "pass",
            (false, true) => "known",
            (false, false) => "FAIL",
        }
    }

    /// Counts as passed: passed, or failed exactly as documented.
    pub(crate) fn acceptable(&self) -> bool {
        self.ok || self.known
    }

    /// Marks a failure whose detail contains `signature` as the known incompatibility
    /// documented at `doc`.
    pub(crate) fn known_if(mut self, signature: &str, doc: &str) -> Self {
        if !self.ok && self.detail.contains(signature) {
            self.known = true;
            self.detail = format!("{} — known client bug, see {doc}", self.detail);
        }
        self
    }

    /// A passed cell checked by the harness itself.
    pub(crate) fn passed(case: &str, detail: impl Into<String>) -> Self {
        Self {
            ok: true,
            ..Self::failed(case, detail)
        }
    }

    /// A failed cell that is not a case (a suite that could not run).
    pub(crate) fn failed(case: &str, detail: impl Into<String>) -> Self {
        Self {
            case: case.to_owned(),
            ok: false,
            known: false,
            detail: detail.into(),
            ms: 0,
        }
    }
}

/// Runs one case of an in-process client.
pub(crate) async fn run_case(
    case: &str,
    body: impl Future<Output = anyhow::Result<String>>,
) -> Outcome {
    let started = Instant::now();
    let result = body.await;
    let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let (ok, detail) = match result {
        Ok(detail) => (true, detail),
        Err(e) => (false, format!("{e:#}")),
    };
    Outcome {
        case: case.to_owned(),
        ok,
        known: false,
        detail,
        ms,
    }
}

/// Prints the table: one row per client and case.
pub(crate) fn print_table(rows: &[(String, Outcome)]) {
    let client_w = rows.iter().map(|r| r.0.len()).max().unwrap_or(6).max(6);
    let case_w = rows
        .iter()
        .map(|r| r.1.case.len())
        .max()
        .unwrap_or(4)
        .max(4);
    println!();
    println!(
        "{:client_w$}  {:case_w$}  result  {:>6}  detail",
        "client", "case", "ms"
    );
    println!("{}", "-".repeat(client_w + case_w + 30));
    for (client, o) in rows {
        let verdict = o.verdict();
        println!(
            "{client:client_w$}  {:case_w$}  {verdict:6}  {:>6}  {}",
            o.case, o.ms, o.detail
        );
    }
    let failed = rows.iter().filter(|r| !r.1.acceptable()).count();
    let known = rows.iter().filter(|r| r.1.known).count();
    println!(
        "\n{} cells, {} passed, {known} known client incompatibilities, {failed} failed",
        rows.len(),
        rows.len() - failed - known
    );
}

/// Writes `summary.json` into `dir`.
pub(crate) fn write_summary(dir: &Path, rows: &[(String, Outcome)]) -> anyhow::Result<()> {
    let cells: Vec<Value> = rows
        .iter()
        .map(|(client, o)| {
            json!({"client": client, "case": o.case, "result": o.verdict(), "detail": o.detail, "ms": o.ms})
        })
        .collect();
    let failed = rows.iter().filter(|r| !r.1.acceptable()).count();
    let known = rows.iter().filter(|r| r.1.known).count();
    let summary = json!({
        "cells": cells, "passed": rows.len() - failed - known, "known": known, "failed": failed,
    });
    std::fs::write(
        dir.join("summary.json"),
        serde_json::to_vec_pretty(&summary)?,
    )?;
    Ok(())
}
