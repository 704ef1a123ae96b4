//! Start-up failures: each exits non-zero with one clear line naming the problem.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code stops at the first surprise

use icbt_e2e::{assert_one_line_failure, run_cli};

#[test]
fn unknown_config_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.toml");
    std::fs::write(&file, "[server]\nbind_address = \"127.0.0.1:8443\"\n").unwrap();
    let out = run_cli(
        &["serve", "--dev", "--config", file.to_str().unwrap()],
        &[],
        dir.path(),
    );
    assert_one_line_failure(&out, &["bind_address", "server"]);
    let out = run_cli(
        &["config", "check", file.to_str().unwrap()],
        &[],
        dir.path(),
    );
    assert_one_line_failure(&out, &["bind_address"]);
}

#[test]
fn missing_certificate_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_cli(
        &["serve"],
        &[
            ("ICBT_TLS__CERT_FILE", "/nonexistent/cert.pem"),
            ("ICBT_TLS__KEY_FILE", "/nonexistent/key.pem"),
        ],
        dir.path(),
    );
    assert_one_line_failure(&out, &["tls.cert_file", "/nonexistent/cert.pem"]);
}

#[test]
fn certificate_file_that_is_not_pem() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    std::fs::write(&cert, "hello").unwrap();
    let out = run_cli(
        &["serve"],
        &[
            ("ICBT_TLS__CERT_FILE", cert.to_str().unwrap()),
            ("ICBT_TLS__KEY_FILE", cert.to_str().unwrap()),
            ("ICBT_SERVER__PUBLIC_URL", "https://gateway.example.no"),
            ("ICBT_STORAGE__DATA_DIR", dir.path().to_str().unwrap()),
        ],
        dir.path(),
    );
    assert_one_line_failure(&out, &["cert.pem"]);
}

#[test]
fn unreachable_postgres() {
    let dir = tempfile::tempdir().unwrap();
    // Port 1 on loopback: nothing listens there, the connection is refused at once.
    let out = run_cli(
        &["serve", "--dev"],
        &[
            ("ICBT_STORAGE__URL", "postgres://icbt@127.0.0.1:1/icbt"),
            ("ICBT_SERVER__BIND", "127.0.0.1:0"),
        ],
        dir.path(),
    );
    let line = assert_one_line_failure(&out, &["cannot connect to postgres", "127.0.0.1:1"]);
    assert!(line.to_lowercase().contains("refused"), "{line}");
}

#[test]
fn port_already_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = run_cli(
        &["serve", "--dev"],
        &[("ICBT_SERVER__BIND", &addr)],
        dir.path(),
    );
    assert_one_line_failure(&out, &["cannot listen on", &addr, "in use"]);
}

#[test]
fn dev_mode_refuses_a_non_loopback_bind() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_cli(
        &["serve", "--dev"],
        &[("ICBT_SERVER__BIND", "0.0.0.0:0")],
        dir.path(),
    );
    assert_one_line_failure(&out, &["server.bind", "loopback"]);
}

#[test]
fn production_without_configuration_says_what_to_set() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_cli(&["serve"], &[], dir.path());
    assert_one_line_failure(&out, &["tls.cert_file", "--dev"]);
}

#[test]
fn config_check_prints_the_effective_configuration_with_secrets_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("db-password");
    std::fs::write(&secret, "correct-horse-battery\n").unwrap();
    let file = dir.path().join("gateway.toml");
    std::fs::write(
        &file,
        format!(
            "[storage]\nurl = \"postgres://icbt@db.internal/icbt\"\npassword = {{ file = \"{}\" }}\n",
            secret.display()
        ),
    )
    .unwrap();
    let out = run_cli(
        &["config", "check", "--dev", file.to_str().unwrap()],
        &[
            ("ICBT_SERVER__REQUEST_TIMEOUT_MS", "1234"),
            // The `icbt` command line's variables, exported in the same shell as the
            // README shows, are not the gateway's settings.
            ("ICBT_GATEWAY", "https://gateway.example"),
            ("ICBT_TOKEN_FILE", "token"),
            ("ICBT_LOG_KEYS", "a2V5"),
        ],
        dir.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = String::from_utf8(out.stdout).unwrap();
    assert!(
        shown.contains("request_timeout_ms = 1234"),
        "environment applied: {shown}"
    );
    assert!(shown.contains("[redacted]"), "{shown}");
    assert!(!shown.contains("correct-horse-battery"), "{shown}");
    assert!(shown.contains("configuration OK"), "{shown}");
}

#[test]
fn example_configuration_checks() {
    let dir = tempfile::tempdir().unwrap();
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/example.toml"
    ))
    .unwrap();
    std::fs::write(dir.path().join("cert.pem"), "x").unwrap();
    std::fs::write(dir.path().join("key.pem"), "x").unwrap();
    let signing_key = dir.path().join("audit-signing-key.pem");
    std::fs::copy(icbt_e2e::audit_signing_key(), &signing_key).unwrap();
    let example = example.replace(
        "/run/secrets/icbt-audit-signing-key.pem",
        signing_key.to_str().unwrap(),
    );
    let file = dir.path().join("gateway.toml");
    // Production refuses a private key others may read, naming it and the fix.
    std::fs::write(
        &file,
        example.replace("/etc/icbt-gateway/tls", dir.path().to_str().unwrap()),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        let key = dir.path().join("key.pem");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let out = run_cli(
            &["config", "check", file.to_str().unwrap()],
            &[],
            dir.path(),
        );
        assert_one_line_failure(&out, &["tls.key_file", "mode 0644", "chmod 600"]);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    std::fs::write(
        &file,
        example.replace("/etc/icbt-gateway/tls", dir.path().to_str().unwrap()),
    )
    .unwrap();
    let out = run_cli(
        &["config", "check", file.to_str().unwrap()],
        &[],
        dir.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
