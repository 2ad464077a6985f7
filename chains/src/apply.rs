//! `vnfctl apply`: move a running chain to a new plan, one instance at a time, with
//! rollback.
//!
//! Only what changed is touched. An instance whose config text changed is reloaded in
//! place (`POST /reload` re-reads its file; a reload keeps connections, NAT sessions and
//! learned MACs). An instance added, removed, or whose identity changed (kind, underlay
//! address, admin address) is started or stopped by the supervisor. If an instance refuses
//! its new config, every instance already reloaded gets its old config back, and nothing
//! else is changed.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::admin_client;
use crate::cli::{write_atomic, write_plan};
use crate::manifest::{Instance, Manifest};
use crate::plan::Plan;
use crate::supervise;

/// How long one reload may take (a load balancer's certificate reload reads files).
const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long added or replaced instances may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// What happens to one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// New in the plan: started.
    Add(Instance),
    /// Gone from the plan: stopped.
    Remove(Instance),
    /// Same instance, new config text: reloaded in place.
    Reload {
        /// The instance.
        instance: Instance,
        /// Its config now.
        old: String,
        /// Its config to be.
        new: String,
    },
    /// Kind, underlay or admin address changed: stopped and started again.
    Replace {
        /// As it runs.
        old: Instance,
        /// As planned.
        new: Instance,
    },
}

/// The changes from the plan in `dir` to `plan`, in the new plan's order (removals last).
pub fn changes(plan: &Plan, dir: &Path) -> anyhow::Result<Vec<Change>> {
    let old = Manifest::read(dir)?;
    if old.tenant != plan.manifest.tenant {
        bail!(
            "{} runs tenant `{}`, the chain file is tenant `{}`: give the right --state",
            dir.display(),
            old.tenant,
            plan.manifest.tenant
        );
    }
    let files = plan.files();
    let mut out = Vec::new();
    for new in &plan.manifest.instances {
        let Some(before) = old.instances.iter().find(|i| i.name == new.name) else {
            out.push(Change::Add(new.clone()));
            continue;
        };
        let new_text = files
            .iter()
            .find(|(n, _)| *n == new.config)
            .map(|(_, t)| t.clone())
            .unwrap_or_default();
        let old_text =
            std::fs::read_to_string(Manifest::config_path(dir, before)).unwrap_or_default();
        if before.kind != new.kind
            || before.host != new.host
            || before.admin != new.admin
            || before.config != new.config
        {
            out.push(Change::Replace {
                old: before.clone(),
                new: new.clone(),
            });
        } else if old_text != new_text {
            out.push(Change::Reload {
                instance: new.clone(),
                old: old_text,
                new: new_text,
            });
        }
    }
    for before in &old.instances {
        if !plan
            .manifest
            .instances
            .iter()
            .any(|i| i.name == before.name)
        {
            out.push(Change::Remove(before.clone()));
        }
    }
    Ok(out)
}

/// The lines that differ between `old` and `new` (a longest-common-subsequence diff; the
/// files are small), with a line of context on each side of a change.
pub fn diff(old: &str, new: &str) -> Vec<String> {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let (n, m) = (a.len(), b.len());
    // The table is n*m cells: beyond a few million, say what changed in size only.
    if n.saturating_mul(m) > 4_000_000 {
        return vec![format!(
            " ~ {n} lines -> {m} lines (too long to compare line by line)"
        )];
    }
    // lcs[i][j]: the LCS length of a[i..] and b[j..].
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut ops: Vec<(char, &str)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            ops.push((' ', a[i]));
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            // Removals before additions, as `diff -u` shows a replaced line.
            ops.push(('-', a[i]));
            i += 1;
        } else {
            ops.push(('+', b[j]));
            j += 1;
        }
    }
    let near = |k: usize| {
        ops[k.saturating_sub(1)..(k + 2).min(ops.len())]
            .iter()
            .any(|(c, _)| *c != ' ')
    };
    let mut out = Vec::new();
    let mut skipped = false;
    for (k, (c, line)) in ops.iter().enumerate() {
        if *c != ' ' || near(k) {
            if skipped && !out.is_empty() {
                out.push("   ...".to_string());
            }
            skipped = false;
            out.push(format!(" {c} {line}"));
        } else {
            skipped = true;
        }
    }
    out
}

/// Print the changes; unless `dry_run`, carry them out. `Ok(false)` when an instance
/// refused its config (everything was rolled back) or the chain is not running.
pub fn apply(
    plan: &Plan,
    state: &Path,
    dry_run: bool,
    out: &mut dyn Write,
) -> anyhow::Result<bool> {
    let dir = supervise::plan_dir(state);
    let changes = changes(plan, &dir).with_context(|| {
        format!(
            "no chain of tenant `{}` planned in {} (start it with `vnfctl up`)",
            plan.manifest.tenant,
            state.display()
        )
    })?;
    if changes.is_empty() {
        writeln!(out, "no change: the running chain already has this plan")?;
        // The scrape configuration may still differ (--scrape-interval).
        write_plan(plan, &dir)?;
        return Ok(true);
    }
    for c in &changes {
        match c {
            Change::Add(i) => writeln!(
                out,
                "+ {} ({}): new instance on {}",
                i.name,
                i.kind.name(),
                i.host
            )?,
            Change::Remove(i) => writeln!(out, "- {} ({}): removed", i.name, i.kind.name())?,
            Change::Replace { old, new } => writeln!(
                out,
                "~ {}: replaced ({} on {} admin {} -> {} on {} admin {}): restarted, its connections are lost",
                new.name,
                old.kind.name(),
                old.host,
                old.admin,
                new.kind.name(),
                new.host,
                new.admin
            )?,
            Change::Reload { instance, old, new } => {
                writeln!(
                    out,
                    "~ {} ({}): config changes, reloaded in place:",
                    instance.name,
                    instance.kind.name()
                )?;
                for line in diff(old, new) {
                    writeln!(out, "  {line}")?;
                }
            }
        }
    }
    if dry_run {
        writeln!(out, "dry run: nothing changed")?;
        return Ok(true);
    }
    if supervise::is_running(state).is_none() {
        write_plan(plan, &dir)?;
        writeln!(
            out,
            "the chain is not running: wrote the new plan; `vnfctl up` starts it"
        )?;
        return Ok(true);
    }

    // Reload in place, in plan order; on a refusal put back what was changed.
    let mut done: Vec<(&Instance, &str)> = Vec::new();
    for c in &changes {
        let Change::Reload { instance, old, new } = c else {
            continue;
        };
        let file = Manifest::config_path(&dir, instance);
        write_atomic(&file, new)?;
        let started = Instant::now();
        match reload(instance) {
            Ok(()) => {
                writeln!(
                    out,
                    "reloaded {} in {:.0} ms",
                    instance.name,
                    started.elapsed().as_secs_f64() * 1e3
                )?;
                done.push((instance, old));
            }
            Err(why) => {
                writeln!(out, "{} refused its new config:", instance.name)?;
                for line in why.lines() {
                    writeln!(out, "  {line}")?;
                }
                // Its running config is still the old one; only the file changed.
                write_atomic(&file, old)?;
                for (i, text) in done.iter().rev() {
                    write_atomic(&Manifest::config_path(&dir, i), text)?;
                    match reload(i) {
                        Ok(()) => writeln!(out, "rolled back {}", i.name)?,
                        Err(e) => writeln!(out, "could not roll back {}: {e}", i.name)?,
                    }
                }
                writeln!(out, "apply refused: the chain runs as before")?;
                return Ok(false);
            }
        }
    }
    // The rest goes through the supervisor: the new manifest, then a reconcile.
    write_plan(plan, &dir)?;
    let structural = changes.iter().any(|c| !matches!(c, Change::Reload { .. }));
    if structural {
        supervise::reconcile(state)?;
        settle(state, &changes, out)?;
    }
    writeln!(
        out,
        "applied {} change{}",
        changes.len(),
        if changes.len() == 1 { "" } else { "s" }
    )?;
    Ok(true)
}

/// Wait until the supervisor runs every added instance and has stopped every removed one.
/// Its own view, not the admin addresses: a removed instance of another name may still
/// answer there while it stops.
fn settle(state: &Path, changes: &[Change], out: &mut dyn Write) -> anyhow::Result<()> {
    let mut starting: Vec<&Instance> = Vec::new();
    let mut stopping: Vec<&Instance> = Vec::new();
    for c in changes {
        match c {
            Change::Add(i) | Change::Replace { new: i, .. } => starting.push(i),
            Change::Remove(i) => stopping.push(i),
            Change::Reload { .. } => {}
        }
    }
    // The status file is rewritten at least every second; a reconcile marks it at once.
    let deadline = Instant::now() + READY_TIMEOUT;
    while !starting.is_empty() || !stopping.is_empty() {
        let status = supervise::read_status(state).ok();
        let find = |name: &str| {
            status
                .as_ref()
                .and_then(|s| s.instances.iter().find(|x| x.name == name))
        };
        let mut lines = Vec::new();
        starting.retain(|i| {
            let up = find(&i.name).is_some_and(|s| {
                s.state == supervise::State::Running && s.admin == i.admin && s.kind == i.kind
            });
            if up {
                lines.push(format!("started {}", i.name));
            }
            !up
        });
        stopping.retain(|i| {
            let gone = find(&i.name).is_none_or(|s| s.pid.is_none());
            if gone {
                lines.push(format!("stopped {}", i.name));
            }
            !gone
        });
        for line in lines {
            writeln!(out, "{line}")?;
        }
        if starting.is_empty() && stopping.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            let names: Vec<&str> = starting
                .iter()
                .chain(&stopping)
                .map(|i| i.name.as_str())
                .collect();
            bail!(
                "{} did not settle within {READY_TIMEOUT:?}; see `vnfctl status` and {}",
                names.join(", "),
                supervise::supervisor_log(state).display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Ask `instance` to re-read its config file; the error is its answer.
fn reload(instance: &Instance) -> Result<(), String> {
    match admin_client::post(instance.admin, "/reload", "", RELOAD_TIMEOUT) {
        Ok((code, _)) if (200..300).contains(&code) => Ok(()),
        Ok((code, body)) => Err(format!("HTTP {code}: {}", body.trim())),
        Err(e) => Err(format!("no answer from {}: {e}", instance.admin)),
    }
}

#[cfg(test)]
mod tests {
    use super::diff;

    #[test]
    fn diff_shows_changed_lines_with_context() {
        let old = "a\nb\nc\nd\ne\nf\ng\n";
        let new = "a\nb\nc\nD\ne\nf\ng\nh\n";
        assert_eq!(
            diff(old, new),
            ["   c", " - d", " + D", "   e", "   ...", "   g", " + h"]
        );
        assert!(diff(old, old).is_empty());
        assert_eq!(diff("", "x\n"), [" + x"]);
    }
}
