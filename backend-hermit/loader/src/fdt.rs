//! A minimal flattened-device-tree writer: the root (two address and size cells,
//! `compatible = "hermit,multiboot"`), `/chosen` and one `/memory` node, which is what
//! Hermit reads from it on x86_64.

const MAGIC: u32 = 0xd00d_feed;
const BEGIN_NODE: u32 = 1;
const END_NODE: u32 = 2;
const PROP: u32 = 3;
const END: u32 = 9;
const HEADER: usize = 40;
const RSVMAP: usize = 16;

struct Buf<'a> {
    b: &'a mut [u8],
    at: usize,
}

impl Buf<'_> {
    fn bytes(&mut self, s: &[u8]) -> Option<()> {
        let end = self.at.checked_add(s.len())?;
        self.b.get_mut(self.at..end)?.copy_from_slice(s);
        self.at = end;
        Some(())
    }
    fn u32(&mut self, v: u32) -> Option<()> {
        self.bytes(&v.to_be_bytes())
    }
    fn align(&mut self) -> Option<()> {
        while !self.at.is_multiple_of(4) {
            self.bytes(&[0])?;
        }
        Some(())
    }
}

/// Property names, in the strings block in this order.
const NAMES: [&str; 6] = [
    "#address-cells",
    "#size-cells",
    "compatible",
    "bootargs",
    "device_type",
    "reg",
];

fn name_off(name: &str) -> u32 {
    let mut off = 0;
    for n in NAMES {
        if n == name {
            return off;
        }
        off += n.len() as u32 + 1;
    }
    0
}

fn prop(s: &mut Buf<'_>, name: &str, value: &[u8]) -> Option<()> {
    s.u32(PROP)?;
    s.u32(value.len() as u32)?;
    s.u32(name_off(name))?;
    s.bytes(value)?;
    s.align()
}

fn node(s: &mut Buf<'_>, name: &str) -> Option<()> {
    s.u32(BEGIN_NODE)?;
    s.bytes(name.as_bytes())?;
    s.bytes(&[0])?;
    s.align()
}

/// Writes the tree into `out`; returns its size, or `None` if `out` is too small.
pub fn write(out: &mut [u8], mem_start: u64, mem_size: u64) -> Option<usize> {
    let mut s = Buf {
        b: out,
        at: HEADER + RSVMAP,
    };
    let struct_off = s.at;
    node(&mut s, "")?;
    prop(&mut s, "#address-cells", &2u32.to_be_bytes())?;
    prop(&mut s, "#size-cells", &2u32.to_be_bytes())?;
    prop(&mut s, "compatible", b"hermit,multiboot\0")?;
    node(&mut s, "chosen")?;
    prop(&mut s, "bootargs", b"\0")?;
    s.u32(END_NODE)?;
    node(&mut s, "memory@100000")?;
    prop(&mut s, "device_type", b"memory\0")?;
    let mut reg = [0u8; 16];
    reg[..8].copy_from_slice(&mem_start.to_be_bytes());
    reg[8..].copy_from_slice(&mem_size.to_be_bytes());
    prop(&mut s, "reg", &reg)?;
    s.u32(END_NODE)?;
    s.u32(END_NODE)?;
    s.u32(END)?;
    let struct_size = s.at - struct_off;
    let strings_off = s.at;
    for n in NAMES {
        s.bytes(n.as_bytes())?;
        s.bytes(&[0])?;
    }
    let strings_size = s.at - strings_off;
    let total = s.at;
    let header = [
        MAGIC,
        total as u32,
        struct_off as u32,
        strings_off as u32,
        HEADER as u32,
        17,
        16,
        0,
        strings_size as u32,
        struct_size as u32,
    ];
    let mut h = Buf { b: s.b, at: 0 };
    for v in header {
        h.u32(v)?;
    }
    // The memory reservation map: one terminating empty entry.
    h.bytes(&[0; RSVMAP])?;
    Some(total)
}
