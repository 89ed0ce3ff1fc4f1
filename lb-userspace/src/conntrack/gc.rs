//! Garbage collection of the flow maps: expired flows leave both maps,
//! reverse entries no flow points at leave, and a live flow whose reverse
//! entry was evicted gets it back. The kernel already treats an expired flow
//! as gone (and takes over its SNAT port), so collection only keeps the maps
//! holding live flows; its timing never decides who owns a port.
//!
//! Deciding is pure ([`plan`]); [`Collector::sweep`] reads and writes the
//! pinned maps, and deletes an entry only if it is still what was judged (a
//! packet or a new claim in between wins).

use std::{
    collections::{BTreeMap, HashMap as StdHashMap},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use aya::maps::{HashMap, Map, MapData, PerCpuArray};
use lb_common::{
    maps6::{BackendKey6, FlowKey6, MAP_SNAT_EXHAUSTED6},
    BackendKey, Event, Family, FlowKey, SnatExhaustion, CLAIM_GRACE_S, MAP_EVENTS,
    MAP_SNAT_EXHAUSTED,
};

use super::{FlowFamily, FlowStats, Snapshot};

/// `BPF_NOEXIST`.
const BPF_NOEXIST: u64 = 1;

/// What one sweep of family `K`'s maps (IPv4's by default) does.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan<K: FlowFamily = FlowKey> {
    /// Expired flows to delete, each with the entry judged.
    pub expired: Vec<(K, K::Ct)>,
    /// Reverse entries to delete (of expired flows, or of none), each as judged.
    pub replies: Vec<(K, K::Rev)>,
    /// Missing reverse entries of live flows to restore.
    pub restore: Vec<(K, K::Rev)>,
}

/// Decides a sweep over `snapshot`.
#[must_use]
pub fn plan<K: FlowFamily>(snapshot: &Snapshot<K>) -> Plan<K> {
    let mut plan = Plan {
        expired: Vec::new(),
        replies: Vec::new(),
        restore: Vec::new(),
    };
    // Reply tuples some live flow's reverse entry restores.
    let mut owned = std::collections::HashSet::new();
    for (key, ct) in &snapshot.flows {
        let life = snapshot.life(key, ct);
        if life.expired {
            plan.expired.push((*key, *ct));
            continue;
        }
        let reply = key.reply_of(ct);
        match life.reply {
            Some(reply) => {
                owned.insert(reply);
            }
            None if !snapshot.replies.contains_key(&reply) => {
                plan.restore
                    .push((reply, key.restoring(snapshot.now_s, key.restore_claim())));
                owned.insert(reply);
            }
            // The tuple is another flow's: this flow's replies are lost; it
            // expires (the kernel never takes a live flow's tuple).
            None => {}
        }
    }
    for (reply, rev) in &snapshot.replies {
        if owned.contains(reply) {
            continue;
        }
        // A claim in progress writes its conntrack entry right after.
        if snapshot.now_s.saturating_sub(K::rev_times(rev).0) < CLAIM_GRACE_S {
            continue;
        }
        plan.replies.push((*reply, *rev));
    }
    plan.replies.sort_by_key(|(k, _)| k.order());
    plan
}

/// What a sweep did (both families' maps together).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Conntrack entries deleted.
    pub conntrack_deleted: u64,
    /// Reverse-NAT entries deleted.
    pub reverse_deleted: u64,
    /// Reverse-NAT entries restored.
    pub restored: u64,
    /// The live flows after the sweep.
    pub stats: FlowStats,
    /// Conntrack entries left after the sweep.
    pub conntrack_live: u64,
    /// Reverse-NAT entries left after the sweep.
    pub reverse_live: u64,
    /// Conntrack and reverse-NAT entries the programs ever created (restored
    /// ones included), read right after the sweep.
    pub created: (u64, u64),
}

/// The collector: the pinned flow maps, swept on demand.
pub struct Collector {
    pin_dir: std::path::PathBuf,
}

impl Collector {
    /// A collector of the maps pinned under `pin_dir`.
    #[must_use]
    pub fn new(pin_dir: &Path) -> Self {
        Self {
            pin_dir: pin_dir.to_path_buf(),
        }
    }

    fn open<K: FlowFamily, V: aya::Pod>(&self, name: &str) -> Result<HashMap<MapData, K, V>> {
        let path = crate::datapath::pins_dir(&self.pin_dir).join(name);
        let data =
            MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
        Ok(HashMap::try_from(Map::LruHashMap(data))?)
    }

    /// One sweep of both families: reads the flow maps, deletes what
    /// expired or is orphaned (if unchanged since read), restores missing
    /// reverse entries.
    pub fn sweep(&self) -> Result<Swept> {
        // Read before the maps: an entry created while they are read is
        // then live but not yet counted as created, which the eviction
        // count (created - live - collected, saturating) absorbs; read
        // after, it would be counted as evicted, for good.
        let created = self.created()?;
        let mut swept = self.sweep_family::<FlowKey>()?;
        let six = self.sweep_family::<FlowKey6>()?;
        swept.conntrack_deleted += six.conntrack_deleted;
        swept.reverse_deleted += six.reverse_deleted;
        swept.restored += six.restored;
        swept.stats.add(&six.stats);
        swept.conntrack_live += six.conntrack_live;
        swept.reverse_live += six.reverse_live;
        swept.created = created;
        Ok(swept)
    }

    /// One sweep of family `K`'s maps (`created` left 0).
    fn sweep_family<K: FlowFamily>(&self) -> Result<Swept> {
        let snapshot = Snapshot::<K>::read_in(&self.pin_dir)?;
        let plan = plan(&snapshot);
        let mut ct = self.open::<K, K::Ct>(K::CONNTRACK)?;
        let mut rev = self.open::<K, K::Rev>(K::REVNAT)?;
        let mut swept = Swept::default();
        for (key, judged) in &plan.expired {
            if ct.get(key, 0).is_ok_and(|now| now == *judged) && ct.remove(key).is_ok() {
                swept.conntrack_deleted += 1;
                let reply = key.reply_of(judged);
                if let Ok(r) = rev.get(&reply, 0) {
                    if key.restored_by(&r)
                        && snapshot.replies.get(&reply) == Some(&r)
                        && rev.remove(&reply).is_ok()
                    {
                        swept.reverse_deleted += 1;
                    }
                }
            }
        }
        for (reply, judged) in &plan.replies {
            if rev.get(reply, 0).is_ok_and(|now| now == *judged) && rev.remove(reply).is_ok() {
                swept.reverse_deleted += 1;
            }
        }
        for (reply, entry) in &plan.restore {
            // The flow may have gone meanwhile; a restored entry of a gone
            // flow is an orphan the next sweep collects.
            if ct.get(&K::client_of(entry, reply.proto()), 0).is_ok()
                && rev.insert(reply, entry, BPF_NOEXIST).is_ok()
            {
                swept.restored += 1;
            }
        }
        swept.stats = snapshot.stats();
        swept.stats.expired = swept.stats.expired.saturating_sub(swept.conntrack_deleted);
        swept.conntrack_live =
            (snapshot.flows.len() as u64).saturating_sub(swept.conntrack_deleted);
        swept.reverse_live =
            (snapshot.replies.len() as u64 + swept.restored).saturating_sub(swept.reverse_deleted);
        Ok(swept)
    }

    /// Conntrack and reverse-NAT entries the programs ever created (the
    /// kernel's restored reverse entries included), both families'.
    pub fn created(&self) -> Result<(u64, u64)> {
        let path = crate::datapath::pins_dir(&self.pin_dir).join(MAP_EVENTS);
        let data =
            MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
        let events: PerCpuArray<MapData, u64> = PerCpuArray::try_from(Map::PerCpuArray(data))?;
        let total = |e: Event| -> Result<u64> {
            let mut sum = 0;
            for family in Family::ALL {
                sum += events.get(&e.slot(family), 0)?.iter().sum::<u64>();
            }
            Ok(sum)
        };
        Ok((
            total(Event::ConntrackCreated)?,
            total(Event::RevNatCreated)? + total(Event::RevNatRestored)?,
        ))
    }

    /// Failed SNAT claims per backend of either family, as the kernel
    /// counted them, by the backend's label ([`super::backend_label`]).
    pub fn exhaustion(&self) -> Result<BTreeMap<String, u64>> {
        let mut counts =
            self.exhaustion_in::<BackendKey>(MAP_SNAT_EXHAUSTED, super::backend_label)?;
        counts
            .extend(self.exhaustion_in::<BackendKey6>(MAP_SNAT_EXHAUSTED6, super::backend_label6)?);
        Ok(counts)
    }

    /// The counts of one family's exhaustion map `name`, labelled by `label`.
    fn exhaustion_in<K: aya::Pod>(
        &self,
        name: &str,
        label: fn(&K) -> String,
    ) -> Result<BTreeMap<String, u64>> {
        let path = crate::datapath::pins_dir(&self.pin_dir).join(name);
        let data =
            MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
        let map: HashMap<MapData, K, SnatExhaustion> = HashMap::try_from(Map::HashMap(data))?;
        let mut counts = BTreeMap::new();
        for item in &map {
            let (k, v) = item?;
            counts.insert(label(&k), v.count);
        }
        Ok(counts)
    }
}

/// Logs SNAT exhaustion at most once per `interval` per backend.
#[derive(Debug)]
pub struct ExhaustionLog {
    interval: Duration,
    seen: StdHashMap<String, (u64, Option<Instant>)>,
}

impl ExhaustionLog {
    /// A log that speaks of each backend at most once per `interval`.
    #[must_use]
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            seen: StdHashMap::new(),
        }
    }

    /// Takes the counts read at `now`; returns the backends to warn about,
    /// each with the failed claims since its last warning.
    pub fn observe(&mut self, now: Instant, counts: &BTreeMap<String, u64>) -> Vec<(String, u64)> {
        let mut warn = Vec::new();
        for (backend, &count) in counts {
            let (reported, last) = self.seen.entry(backend.clone()).or_insert((0, None));
            if count <= *reported {
                continue;
            }
            if last.is_some_and(|at| now.duration_since(at) < self.interval) {
                continue;
            }
            warn.push((backend.clone(), count - *reported));
            *reported = count;
            *last = Some(now);
        }
        warn
    }
}

#[cfg(test)]
mod tests {
    use lb_common::{
        conntrack::CtState, CtEntry, RevNatEntry, CT_F_REPLIED, CT_F_SNAT, IPPROTO_TCP,
    };

    use super::*;

    fn key(port: u16) -> FlowKey {
        FlowKey {
            src_addr: 10,
            dst_addr: 20,
            src_port: port,
            dst_port: 80,
            proto: IPPROTO_TCP,
            pad: [0; 3],
        }
    }

    fn ct(snat_port: u16, state: CtState, last_seen_s: u32) -> CtEntry {
        CtEntry {
            backend_id: 1,
            backend_addr: 30,
            backend_port: 8080,
            snat_port,
            snat_addr: 40,
            flags: CT_F_SNAT | CT_F_REPLIED,
            state: state as u8,
            pad: 0,
            last_seen_s,
            created_ns: 0,
        }
    }

    fn rev(client_port: u16, created_s: u32) -> RevNatEntry {
        RevNatEntry {
            svc_addr: 20,
            client_addr: 10,
            svc_port: 80,
            client_port,
            created_s,
            last_seen_s: 0,
            ifindex: 0,
            claim: u64::from(client_port),
        }
    }

    #[test]
    fn expired_flows_and_orphans_go_live_flows_stay_and_get_their_reply_back() {
        // Timeouts of 5 s everywhere; now = 100.
        let timeouts = [5; lb_common::conntrack::CT_TIMEOUT_COUNT];
        let live = (key(1), ct(1001, CtState::Established, 99));
        let dead = (key(2), ct(1002, CtState::TimeWait, 90));
        let lost_reply = (key(3), ct(1003, CtState::Established, 98));
        let snapshot = Snapshot {
            flows: vec![live, dead, lost_reply],
            replies: StdHashMap::from([
                (live.0.reply_of(&live.1), rev(1, 50)),
                (dead.0.reply_of(&dead.1), rev(2, 50)),
                // Nobody's: an orphan, and a claim in progress (created now).
                (
                    FlowKey {
                        dst_port: 7,
                        ..key(9)
                    },
                    rev(9, 50),
                ),
                (
                    FlowKey {
                        dst_port: 8,
                        ..key(9)
                    },
                    rev(8, 99),
                ),
            ]),
            timeouts,
            now_s: 100,
        };
        let plan = plan(&snapshot);
        assert_eq!(plan.expired, vec![dead]);
        let deleted: Vec<u16> = plan.replies.iter().map(|(k, _)| k.dst_port).collect();
        assert_eq!(deleted, vec![7, dead.0.reply_of(&dead.1).dst_port]);
        assert_eq!(plan.restore.len(), 1);
        let (reply, entry) = plan.restore[0];
        assert_eq!(reply, lost_reply.0.reply_of(&lost_reply.1));
        assert!(entry.restores(&lost_reply.0));
    }

    #[test]
    fn exhaustion_is_logged_at_most_once_a_minute_per_backend() {
        let mut log = ExhaustionLog::new(Duration::from_mins(1));
        let a = super::super::backend_label(&BackendKey {
            addr: 1,
            port: 2,
            proto: 6,
            pad: 0,
        });
        let b = super::super::backend_label6(&BackendKey6 {
            addr: [0xfd00_0000u32.to_be(), 0, 0, 3u32.to_be()],
            port: 2,
            proto: 6,
            pad: 0,
        });
        assert_eq!(b, "[fd00::3]:512/TCP");
        let t0 = Instant::now();
        assert_eq!(
            log.observe(t0, &BTreeMap::from([(a.clone(), 5)])),
            vec![(a.clone(), 5)]
        );
        // More failures within the minute: silent; another backend speaks.
        assert_eq!(
            log.observe(
                t0 + Duration::from_secs(10),
                &BTreeMap::from([(a.clone(), 9), (b.clone(), 1)])
            ),
            vec![(b.clone(), 1)]
        );
        // A minute later, what accumulated is reported.
        assert_eq!(
            log.observe(
                t0 + Duration::from_secs(61),
                &BTreeMap::from([(a.clone(), 9), (b.clone(), 1)])
            ),
            vec![(a.clone(), 4)]
        );
        // Nothing new: silent.
        assert!(log
            .observe(
                t0 + Duration::from_secs(200),
                &BTreeMap::from([(a.clone(), 9), (b.clone(), 1)])
            )
            .is_empty());
    }

    fn key6(port: u16) -> FlowKey6 {
        FlowKey6 {
            src_addr: [0xfd00_0050u32.to_be(), 0, 0, 0x10u32.to_be()],
            dst_addr: [0xfd00_0096u32.to_be(), 0, 0, 0x10u32.to_be()],
            src_port: port,
            dst_port: 80,
            proto: IPPROTO_TCP,
            pad: [0; 3],
        }
    }

    fn ct6(state: CtState, last_seen_s: u32) -> lb_common::maps6::CtEntry6 {
        lb_common::maps6::CtEntry6 {
            backend_id: 1,
            backend_port: 8080,
            backend_addr: [0xfd00_0244u32.to_be(), 0, 0, 5u32.to_be()],
            flags: CT_F_REPLIED,
            state: state as u8,
            last_seen_s,
            ..Default::default()
        }
    }

    #[test]
    fn ipv6_flows_are_collected_by_the_same_rules() {
        let timeouts = [5; lb_common::conntrack::CT_TIMEOUT_COUNT];
        let live = (key6(1), ct6(CtState::Established, 99));
        let dead = (key6(2), ct6(CtState::TimeWait, 90));
        let lost_reply = (key6(3), ct6(CtState::Established, 98));
        let reply_of = |(k, c): &(FlowKey6, lb_common::maps6::CtEntry6)| k.reply_of(c);
        let orphan = FlowKey6 {
            dst_port: 7,
            ..reply_of(&dead)
        };
        let snapshot = Snapshot::<FlowKey6> {
            flows: vec![live, dead, lost_reply],
            replies: StdHashMap::from([
                (reply_of(&live), live.0.restoring(50, 1)),
                (reply_of(&dead), dead.0.restoring(50, 2)),
                (orphan, key6(9).restoring(50, 9)),
            ]),
            timeouts,
            now_s: 100,
        };
        let plan = plan(&snapshot);
        assert_eq!(plan.expired, vec![dead]);
        let deleted: Vec<FlowKey6> = plan.replies.iter().map(|(k, _)| *k).collect();
        assert_eq!(deleted.len(), 2);
        assert!(deleted.contains(&orphan) && deleted.contains(&reply_of(&dead)));
        assert_eq!(plan.restore.len(), 1);
        let (reply, entry) = plan.restore[0];
        assert_eq!(reply, reply_of(&lost_reply));
        assert!(entry.restores(&lost_reply.0));
        // Replies keep an IPv6 flow alive as they keep IPv4's.
        assert!(!snapshot.life(&live.0, &live.1).expired);
        assert_eq!(snapshot.stats().by_state[&CtState::Established], 2);
    }
}
