//! Identities shared along the pipeline (source -> model -> desired): a
//! Kubernetes object's name and a frontend's transport protocol.

use std::fmt;

/// Transport protocol of a frontend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// TCP (IP protocol 6).
    Tcp,
    /// UDP (IP protocol 17).
    Udp,
}

impl Protocol {
    /// IP protocol number.
    #[must_use]
    pub const fn number(self) -> u8 {
        match self {
            Protocol::Tcp => lb_common::IPPROTO_TCP,
            Protocol::Udp => lb_common::IPPROTO_UDP,
        }
    }

    /// Kubernetes spelling ("TCP", "UDP").
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Namespace and name of a Kubernetes object.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectName {
    /// Namespace ("default" when the manifest gives none).
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl fmt::Display for ObjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}
