//! C-22: an exporter borrows its registry, so the registry cannot be moved while the
//! exporter lives (the exporter once kept a pointer to where the registry used to be).
use core::pin::pin;
use notifier_core::export::{ExportOps, ExportRegistry, ExportedPage, Exporter};
use notifier_core::std_platform::StdPlatform as P;

struct Nop;
impl ExportOps<P> for Nop {
    fn revoke(&self, _page: &ExportedPage<P>, _pfn: u64) {}
}

fn main() {
    let reg = Box::new(ExportRegistry::<P>::new());
    let ex = Box::pin(Exporter::new(&reg, Nop));
    let moved: ExportRegistry<P> = {
        let b = reg;
        *b
    };
    let page = pin!(ExportedPage::<P>::new());
    let _ = ex.as_ref().export(page.as_ref(), 1);
    drop(moved);
}
