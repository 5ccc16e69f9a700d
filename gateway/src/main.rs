//! `confab`: the server binary.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // The server lands with the gateway issue (#4); until then this binary says so plainly
    // instead of pretending to serve.
    eprintln!(
        "confab {}: the gateway is not built yet (issue #4); the wire crate is.",
        env!("CARGO_PKG_VERSION")
    );
    std::process::exit(2);
}
