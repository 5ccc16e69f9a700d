//! `loadgen`: load generator for Confab. Lands with the capacity issue (#7).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    eprintln!(
        "loadgen {}: not built yet (issue #7).",
        env!("CARGO_PKG_VERSION")
    );
    std::process::exit(2);
}
