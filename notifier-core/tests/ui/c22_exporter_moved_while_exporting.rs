//! C-22: an exporter is pinned while its pages point to it; it cannot be moved out of
//! its pin (it is `!Unpin`).
use core::pin::{pin, Pin};
use notifier_core::export::{ExportOps, ExportRegistry, ExportedPage, Exporter};
use notifier_core::std_platform::StdPlatform as P;

struct Nop;
impl ExportOps<P> for Nop {
    fn revoke(&self, _page: &ExportedPage<P>, _pfn: u64) {}
}

fn main() {
    let reg = ExportRegistry::<P>::new();
    let page = pin!(ExportedPage::<P>::new());
    let ex = Box::pin(Exporter::new(&reg, Nop));
    ex.as_ref().export(page.as_ref(), 1).unwrap();
    let moved = *Pin::into_inner(ex);
    drop(moved);
}
