//! Prints, as JSON, what a subscriber costs in memory: in the core (what the user
//! embeds, what the core adds, what registration allocates) and in the peers (heap
//! bytes per subscriber beyond the callbacks themselves). `cargo xtask bench-report`
//! puts it in `benches/RESULTS.md`.

use std::mem::size_of;
use std::pin::Pin;

use notifier_benches::alloc_count::{measure, CountingAlloc};
use notifier_benches::lists::{ArcSwapList, Dispatch, EpochList, RcuCleanList, RwLockList};
use notifier_benches::{urcu, Counter, IvCounter, P, PAGE};
use notifier_core::{AddressSpace, IntervalSubscriber, Subscriber};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Subscribers per measurement, to amortise vector growth and one-off allocations.
const MANY: usize = 1024;

struct Entry {
    key: &'static str,
    bytes: f64,
    what: &'static str,
}

/// Heap bytes per subscriber of a peer list, beyond the `Counter` each one holds.
fn peer_bytes<L: Dispatch>() -> f64 {
    let (list, allocs) = measure(|| L::with_subscribers(MANY));
    drop(list);
    allocs.bytes as f64 / MANY as f64 - size_of::<Counter>() as f64
}

fn main() {
    // Register this thread with crossbeam-epoch now, so that its per-thread record is
    // not counted as the list's.
    drop(crossbeam_epoch::pin());
    let mut e = Vec::new();
    let sub = size_of::<Subscriber<Counter, P>>();
    let user = size_of::<Counter>();
    e.push(Entry {
        key: "core_subscriber_adds",
        bytes: (sub - user) as f64,
        what: "notifier-core: bytes the core adds to each subscriber (size_of::<Subscriber<T, P>>() - size_of::<T>())",
    });
    e.push(Entry {
        key: "core_subscriber_total",
        bytes: sub as f64,
        what: "notifier-core: size_of::<Subscriber<Counter, P>>(), what the user embeds (Counter is 8 bytes)",
    });
    let isub = size_of::<IntervalSubscriber<IvCounter, P>>();
    let iuser = size_of::<IvCounter>();
    e.push(Entry {
        key: "core_interval_subscriber_adds",
        bytes: (isub - iuser) as f64,
        what: "notifier-core: bytes the core adds to each interval subscriber (tree node, sequence, deferred link)",
    });
    e.push(Entry {
        key: "core_address_space",
        bytes: size_of::<AddressSpace<P>>() as f64,
        what: "notifier-core: size_of::<AddressSpace<P>>(), embedded in every address space",
    });

    // What registration allocates: the first one creates the per-address-space state,
    // later ones nothing (the node is intrusive).
    let mm = AddressSpace::<P>::new();
    let subs: Vec<Pin<Box<Subscriber<Counter, P>>>> = (0..MANY)
        .map(|_| Box::pin(Subscriber::new(Counter::default())))
        .collect();
    let ((), first) = measure(|| subs[0].as_ref().register(&mm).expect("register"));
    let ((), rest) = measure(|| {
        for s in &subs[1..] {
            s.as_ref().register(&mm).expect("register");
        }
    });
    e.push(Entry {
        key: "core_per_address_space_heap",
        bytes: first.bytes as f64,
        what: "notifier-core: heap bytes the first registration on an address space allocates (its subscriptions object)",
    });
    e.push(Entry {
        key: "core_register_heap",
        bytes: rest.bytes as f64 / (MANY - 1) as f64,
        what: "notifier-core: heap bytes each later registration allocates",
    });
    let ivs: Vec<Pin<Box<IntervalSubscriber<IvCounter, P>>>> = (0..MANY)
        .map(|_| Box::pin(IntervalSubscriber::new(IvCounter::default())))
        .collect();
    let ((), ins) = measure(|| {
        for (i, s) in ivs.iter().enumerate() {
            s.as_ref().insert(&mm, 2 * i * PAGE, PAGE).expect("insert");
        }
    });
    e.push(Entry {
        key: "core_insert_heap",
        bytes: ins.bytes as f64 / MANY as f64,
        what: "notifier-core: heap bytes each interval insertion allocates",
    });
    drop(ivs);
    drop(subs);
    drop(mm);

    e.push(Entry {
        key: "rwlock_subscriber_heap",
        bytes: peer_bytes::<RwLockList>(),
        what: "RwLock<Vec<Arc<dyn _>>>: heap bytes per subscriber beyond the callbacks (Arc counts + vector slot)",
    });
    e.push(Entry {
        key: "arc_swap_subscriber_heap",
        bytes: peer_bytes::<ArcSwapList>(),
        what: "ArcSwap<Vec<Arc<dyn _>>>: heap bytes per subscriber beyond the callbacks",
    });
    e.push(Entry {
        key: "crossbeam_epoch_subscriber_heap",
        bytes: peer_bytes::<EpochList>(),
        what: "crossbeam-epoch list: heap bytes per subscriber beyond the callbacks (Arc counts + list node)",
    });
    e.push(Entry {
        key: "rcu_clean_subscriber_heap",
        bytes: peer_bytes::<RcuCleanList>(),
        what: "rcu-clean ArcRcu<Vec<Arc<dyn _>>>: heap bytes per subscriber beyond the callbacks",
    });
    // SAFETY: returns a constant.
    let node = unsafe { urcu::shim_node_size() };
    e.push(Entry {
        key: "liburcu_subscriber_heap",
        bytes: node as f64,
        what: "liburcu list: malloc'd bytes per subscriber (struct shim_node: list head, context, two callbacks), before malloc's own header",
    });

    // The interval tree's depth after the insertion order that makes an unbalanced
    // search tree a list (increasing starts), against C-23's bound 2 log2(n) + 2.
    let depth_n = 100_000usize;
    let depth = notifier_benches::itree::TreeOf::new(depth_n).depth();

    println!("{{");
    println!(
        "  \"liburcu_sys_membarrier\": {},",
        urcu::has_sys_membarrier()
    );
    println!(
        "  \"core_asymmetric_barriers\": {},",
        notifier_core::std_platform::StdPlatform::asymmetric_barriers()
    );
    println!(
        "  \"itree_depth\": {{ \"n\": {depth_n}, \"order\": \"increasing\", \"depth\": {depth} }},"
    );
    println!("  \"entries\": [");
    for (i, x) in e.iter().enumerate() {
        let comma = if i + 1 < e.len() { "," } else { "" };
        println!(
            "    {{ \"key\": \"{}\", \"bytes\": {}, \"what\": \"{}\" }}{comma}",
            x.key, x.bytes, x.what
        );
    }
    println!("  ]");
    println!("}}");
}
