//! Puts the security team's console (`web/dist/console`, built by `npm --prefix web run
//! build`) into the binary. Without a build, a page that says how to make one is put in
//! its place, so `cargo build` never needs Node.

use std::path::{Path, PathBuf};

/// The console's files, and what stands in for each when it has not been built.
const FILES: [(&str, &str); 3] = [
    (
        "index.html",
        "<!doctype html><html lang=\"nb\"><meta charset=\"utf-8\"><title>icbt-gateway</title>\
         <p>Sikkerhetskonsollet er ikke bygget inn i denne binærfilen. Bygg det med \
         <code>npm --prefix client-js ci &amp;&amp; npm --prefix client-js run build &amp;&amp; \
         npm --prefix web ci &amp;&amp; npm --prefix web run build</code> og bygg gatewayen på nytt, \
         eller pek <code>console.assets_dir</code> på <code>web/dist/console</code>.</p></html>\n",
    ),
    ("console.js", ""),
    ("console.css", ""),
];

fn main() -> std::io::Result<()> {
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("../web/dist/console");
    println!("cargo:rerun-if-changed={}", built.display());
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default()).join("console");
    std::fs::create_dir_all(&out)?;
    let complete = FILES.iter().all(|(name, _)| built.join(name).is_file());
    for (name, placeholder) in FILES {
        let from = built.join(name);
        println!("cargo:rerun-if-changed={}", from.display());
        if complete {
            std::fs::copy(&from, out.join(name))?;
        } else {
            std::fs::write(out.join(name), placeholder)?;
        }
    }
    Ok(())
}
