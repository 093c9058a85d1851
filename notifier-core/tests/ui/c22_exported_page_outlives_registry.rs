//! C-22: a page's registry lifetime is invariant, so a page that may live for
//! `'static` cannot be exported into a registry that lives shorter.
use core::pin::{pin, Pin};
use notifier_core::export::{ExportOps, ExportRegistry, ExportedPage, Exporter};
use notifier_core::std_platform::StdPlatform as P;

struct Nop;
impl ExportOps<P> for Nop {
    fn revoke(&self, _page: &ExportedPage<P>, _pfn: u64) {}
}

fn export_forever(page: Pin<&ExportedPage<'static, P>>) {
    let reg = ExportRegistry::<P>::new();
    let ex = pin!(Exporter::new(&reg, Nop));
    let _ = ex.as_ref().export(page, 1);
}

fn main() {
    let page: &'static ExportedPage<'static, P> = Box::leak(Box::new(ExportedPage::new()));
    export_forever(Pin::static_ref(page));
}
