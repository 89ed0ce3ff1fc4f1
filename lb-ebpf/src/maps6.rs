//! IPv6's maps. Layouts and names are documented in `lb_common::maps6`.

use aya_ebpf::{macros::map, maps::ProgramArray};
use lb_common::maps6::TC6_PROGRAMS;

/// `lb_xdp6`, which `lb_xdp` tail-calls for IPv6 frames (pinned).
#[map(name = "XDP6_PROGS")]
pub static XDP6_PROGS: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// The IPv6 TC programs, which the TC entry points tail-call (pinned).
#[map(name = "TC6_PROGS")]
// Three programs: the length fits.
#[allow(clippy::cast_possible_truncation)]
pub static TC6_PROGS: ProgramArray = ProgramArray::with_max_entries(TC6_PROGRAMS.len() as u32, 0);
