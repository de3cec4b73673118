//! Identities. All are small copyable numbers; names and uuids live beside them.

use core::fmt;

macro_rules! id_type {
    ($(#[$meta:meta])* $name:ident, $prefix:literal) => {
        id_type!($(#[$meta])* $name($prefix, u64));
    };
    ($(#[$meta:meta])* $name:ident($prefix:literal, $inner:ty)) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub $inner);

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(self, f)
            }
        }
    };
}

id_type!(
    /// A connected client session (one job process, or one rank of a job).
    ClientId,
    "client#"
);
id_type!(
    /// One allocation request, unique for the scheduler's lifetime.
    RequestId,
    "request#"
);
id_type!(
    /// One grant of GPUs to a client, unique for the scheduler's lifetime.
    LeaseId,
    "lease#"
);

id_type!(
    /// A GPU of the pool: a dense index into [`GpuPool`](crate::GpuPool), stable for its lifetime.
    GpuId("gpu#", u32)
);
id_type!(
    /// A node (host) of the pool: a dense index.
    NodeId("node#", u32)
);

impl GpuId {
    pub(crate) fn index(self) -> usize {
        self.0 as usize
    }
}
