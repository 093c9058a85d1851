//! C-22: a page exported into a registry borrows it for as long as the page lives, even
//! after its exporter is gone: the page's drop takes it out of that registry's table.
use core::pin::pin;
use notifier_core::export::{ExportOps, ExportRegistry, ExportedPage, Exporter};
use notifier_core::std_platform::StdPlatform as P;

struct Nop;
impl ExportOps<P> for Nop {
    fn revoke(&self, _page: &ExportedPage<P>, _pfn: u64) {}
}

fn main() {
    let page = Box::pin(ExportedPage::<P>::new());
    let reg = ExportRegistry::<P>::new();
    {
        let ex = pin!(Exporter::new(&reg, Nop));
        ex.as_ref().export(page.as_ref(), 1).unwrap();
    }
    drop(reg);
    drop(page);
}
