//! Compiles the liburcu shim (csrc/urcu_shim.c) and links liburcu (urcu-memb flavour),
//! and Linux's algorithm (csrc/linux_hlist.c, plain C).
//!
//! liburcu is a system library: Debian's `liburcu-dev`. Without it the build stops
//! here with a message saying what to install (benches/install-deps.sh does it).

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=csrc/urcu_shim.c");
    println!("cargo:rerun-if-changed=csrc/linux_hlist.c");
    println!("cargo:rerun-if-changed=build.rs");

    let header_found = ["/usr/include", "/usr/local/include"]
        .iter()
        .flat_map(|d| {
            let mut v = vec![Path::new(d).join("urcu/urcu-memb.h")];
            if let Ok(rd) = std::fs::read_dir(d) {
                for e in rd.flatten() {
                    v.push(e.path().join("urcu/urcu-memb.h"));
                }
            }
            v
        })
        .any(|p| p.exists());
    let mut build = cc::Build::new();
    build.file("csrc/urcu_shim.c").opt_level(2).warnings(true);
    if let Err(e) = build.try_compile("urcu_shim") {
        let hint = if header_found {
            "the liburcu headers were found, so the C compiler itself failed"
        } else {
            "liburcu's headers (urcu/urcu-memb.h) were not found"
        };
        panic!(
            "\n\nnotifier-benches needs liburcu, the C userspace RCU library ({hint}).\n\
             Install the Debian/Ubuntu package `liburcu-dev`:\n\n    \
             sudo apt-get install liburcu-dev      # or: bash benches/install-deps.sh\n\n\
             compiler error: {e}\n"
        );
    }
    // Linux's algorithm needs nothing but the C compiler.
    cc::Build::new()
        .file("csrc/linux_hlist.c")
        .opt_level(2)
        .warnings(true)
        .compile("linux_hlist");
    println!("cargo:rustc-link-lib=dylib=urcu-memb");
    println!("cargo:rustc-link-lib=dylib=urcu-common");
    println!("cargo:rustc-link-lib=dylib=pthread");
}
