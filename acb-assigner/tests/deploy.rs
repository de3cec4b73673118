//! Bare-metal deployment as Linux users expect it: the systemd units (checked by
//! `systemd-analyze verify`), shell completions and manual pages generated from the CLI
//! (checked by bash and groff). Socket activation and sd_notify run in `daemon.rs`.
//! The tools come with Debian's systemd and groff-base packages; without them these tests skip,
//! saying so, unless `ACB_REQUIRE_SYSTEMD` is set (CI sets it).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::Command;

use acb_assigner::config::Address;
use common::{BIN, TempDir};

fn units() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd")
}

/// Whether `tool` runs; if not, the test skips (or fails under ACB_REQUIRE_SYSTEMD).
fn have(tool: &str) -> bool {
    let ok = Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success());
    if !ok {
        assert!(std::env::var_os("ACB_REQUIRE_SYSTEMD").is_none(), "ACB_REQUIRE_SYSTEMD is set but {tool} cannot run");
        eprintln!("skipped: {tool} is not installed");
    }
    ok
}

#[test]
fn the_systemd_units_verify_and_match_the_daemon() {
    let service = std::fs::read_to_string(units().join("acb-assigner.service")).unwrap();
    let socket = std::fs::read_to_string(units().join("acb-assigner.socket")).unwrap();
    // The socket unit listens where the daemon and its clients look by default.
    assert!(socket.contains(&format!("ListenStream={}\n", Address::SYSTEM_SOCKET)), "{socket}");
    assert!(service.contains("Type=notify\n") && service.contains("RuntimeDirectory=acb\n"));
    assert!(service.contains("ExecStart=/usr/local/bin/acb-assigner serve $ACB_ASSIGNER_ARGS\n"));
    if !have("systemd-analyze") {
        return;
    }
    // verify wants the ExecStart binary to exist: point it at the one built here.
    let dir = TempDir::new("units");
    std::fs::write(dir.0.join("acb-assigner.service"), service.replace("/usr/local/bin/acb-assigner", BIN)).unwrap();
    std::fs::write(dir.0.join("acb-assigner.socket"), &socket).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(dir.0.join("acb-assigner.service"))
        .arg(dir.0.join("acb-assigner.socket"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    // systemd-analyze exits 0 on unknown keys and bad values, saying so on stderr: both count.
    assert!(out.status.success() && err.trim().is_empty(), "systemd-analyze verify:\n{err}");
    // And a broken unit is caught the same way (the check can fail).
    std::fs::write(
        dir.0.join("acb-assigner.service"),
        service.replace("/usr/local/bin/acb-assigner", BIN).replace("Type=notify", "Type=notfy"),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(dir.0.join("acb-assigner.service"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("notfy"));

    let sysusers = units().join("acb.sysusers.conf");
    let out = Command::new("systemd-sysusers").arg("--dry-run").arg(&sysusers).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("'acb'") || text.contains("acb"), "{text}");
}

#[test]
fn bash_completions_parse_and_know_the_flags() {
    let out = Command::new(BIN).args(["completions", "bash"]).output().unwrap();
    assert!(out.status.success());
    let script = String::from_utf8(out.stdout).unwrap();
    for word in ["serve", "status", "simulate", "--scheduler", "--state-dir", "--assigner"] {
        assert!(script.contains(word), "no {word} in the bash completions");
    }
    let dir = TempDir::new("completions");
    let file = dir.0.join("acb-assigner.bash");
    std::fs::write(&file, &script).unwrap();
    // Sourced by bash, then asked, through the function it registered, to complete
    // `acb-assigner ser`.
    let probe = format!(
        "source {}; f=$(complete -p acb-assigner | sed -E 's/.*-F ([^ ]+) .*/\\1/'); \
         COMP_WORDS=(acb-assigner ser); COMP_CWORD=1; COMP_LINE='acb-assigner ser'; COMP_POINT=16; \
         \"$f\" acb-assigner ser acb-assigner; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        file.display()
    );
    let out = Command::new("bash").args(["--norc", "-c", &probe]).output().unwrap();
    let replies = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(replies.trim(), "serve", "completing `ser`");
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let out = Command::new(BIN).args(["completions", shell]).output().unwrap();
        assert!(out.status.success() && out.stdout.len() > 500, "{shell}");
    }
    let out = Command::new(BIN).args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "an unknown shell is a usage error");
}

#[test]
fn manual_pages_render_and_cover_every_subcommand_and_flag() {
    let dir = TempDir::new("man");
    let out = Command::new(BIN).args(["man", "--out-dir"]).arg(&dir.0).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let main = std::fs::read_to_string(dir.0.join("acb-assigner.1")).unwrap();
    assert!(main.contains(".TH acb-assigner 1"), "{main}");
    for sub in ["serve", "status", "watch", "timeline", "release", "alloc", "bench", "simulate", "demo"] {
        assert!(main.contains(sub), "the main page does not name {sub}");
        assert!(dir.0.join(format!("acb-assigner-{sub}.1")).exists(), "no page for {sub}");
    }
    assert!(!dir.0.join("acb-assigner-demo-job.1").exists(), "a hidden subcommand got a page");
    // Every flag of serve is in its page, as clap knows them (nothing to keep in step).
    let serve = std::fs::read_to_string(dir.0.join("acb-assigner-serve.1")).unwrap();
    use clap::CommandFactory;
    let cli = acb_assigner::cli::Cli::command();
    let flags: Vec<String> = cli
        .find_subcommand("serve")
        .unwrap()
        .get_arguments()
        .filter_map(|a| a.get_long())
        .map(|l| format!("\\-\\-{}", l.replace('-', "\\-")))
        .collect();
    assert!(flags.len() > 15, "{flags:?}");
    for flag in flags {
        assert!(serve.contains(&flag), "{flag} is not in acb-assigner-serve(1)");
    }
    // Printed without --out-dir: the main page.
    let out = Command::new(BIN).arg("man").output().unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), main);
    if !have("groff") {
        return;
    }
    for entry in std::fs::read_dir(&dir.0).unwrap() {
        let path = entry.unwrap().path();
        let out = Command::new("groff").args(["-man", "-Tutf8", "-ww", "-z"]).arg(&path).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && err.trim().is_empty(), "groff on {}: {err}", path.display());
    }
}
