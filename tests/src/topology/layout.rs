//! How the cluster is laid out around its nodes: the CNI's pod attachment,
//! node1's firewall, and how senders leave their checksums.

/// How pods are attached to their node, as CNI plugins do it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cni {
    /// A veth per pod, routed by a /32 route on the host side (Calico's,
    /// Cilium's layout).
    Routed,
    /// A veth per pod, enslaved to the node's `cni0` bridge with hairpin
    /// mode on, the node's pod gateway address on the bridge (the bridge
    /// plugin's and flannel's layout).
    Bridge,
    /// [`Cni::Bridge`]'s pods, and the other node's pods reached through a
    /// VXLAN overlay, as flannel's `vxlan` backend sets it up: a `vxlan0`
    /// device per node (VNI 1, UDP 8472, static forwarding entries, no
    /// learning) holding the `.0` address of the node's pod CIDR, the other
    /// node's pod CIDR routed over it to that node's `.0` (a permanent
    /// neighbour entry), and pod links with the overlay's MTU (1450).
    /// Replies of remote backends to pods arrive decapsulated on `vxlan0`.
    BridgeVxlan,
}

impl Cni {
    /// The CNI layout of the default topology: `LB_TEST_CNI` (`routed`,
    /// `bridge` or `vxlan`), routed when unset, so the same end-to-end tests
    /// run on each.
    ///
    /// # Panics
    /// On any other value of `LB_TEST_CNI`.
    #[must_use]
    pub fn from_env() -> Self {
        match std::env::var("LB_TEST_CNI").as_deref() {
            Err(_) | Ok("" | "routed") => Cni::Routed,
            Ok("bridge") => Cni::Bridge,
            Ok("vxlan") => Cni::BridgeVxlan,
            Ok(other) => panic!("LB_TEST_CNI={other:?}: expected routed, bridge or vxlan"),
        }
    }

    /// Whether pods are ports of the node's `cni0` bridge.
    #[must_use]
    pub fn bridged(self) -> bool {
        matches!(self, Cni::Bridge | Cni::BridgeVxlan)
    }
}

/// The firewall rules node1 starts with, as other components of a cluster
/// install them in its FORWARD chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firewall {
    /// No rule.
    None,
    /// kube-proxy's KUBE-FORWARD rule dropping what conntrack finds INVALID
    /// (firewalld and Calico have the like):
    /// [`ClusterTopology::install_invalid_drop`].
    InvalidDrop,
}

impl Firewall {
    /// node1's firewall in the default topology: `LB_TEST_FIREWALL` (`none`
    /// or `invalid-drop`), none when unset or empty, so the same end-to-end
    /// tests run with and without it.
    ///
    /// # Panics
    /// On any other value of `LB_TEST_FIREWALL`.
    #[must_use]
    pub fn from_env() -> Self {
        match std::env::var("LB_TEST_FIREWALL").as_deref() {
            Err(_) | Ok("" | "none") => Firewall::None,
            Ok("invalid-drop") => Firewall::InvalidDrop,
            Ok(other) => panic!("LB_TEST_FIREWALL={other:?}: expected none or invalid-drop"),
        }
    }
}

/// How the hosts beyond node1's uplink send their L4 checksums.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum SenderChecksums {
    /// Complete: TX checksum offload off at every sender, as a real wire
    /// delivers them (XDP on node1's veth uplink may rewrite them).
    Complete,
    /// Partial, as Linux leaves them by default on a veth (TX offload on);
    /// node1 completes checksums in software on its uplink's way out
    /// (`ethtool -K eth0 tx off`), where a wrong update would show.
    Partial,
}
