//! C-22: an exporter borrows its registry, so the registry cannot be dropped first
//! (it was a use-after-free in the exporter's drop).
use notifier_core::export::{ExportOps, ExportRegistry, ExportedPage, Exporter};
use notifier_core::std_platform::StdPlatform as P;

struct Nop;
impl ExportOps<P> for Nop {
    fn revoke(&self, _page: &ExportedPage<P>, _pfn: u64) {}
}

fn main() {
    let reg = Box::new(ExportRegistry::<P>::new());
    let ex = Box::pin(Exporter::new(&reg, Nop));
    drop(reg);
    drop(ex);
}
