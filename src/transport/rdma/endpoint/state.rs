//! Endpoint connection states (spec §5.1).

/// Where an endpoint is in its life. Readiness is encoded here and nowhere
/// else (the lesson of Mooncake PR #2625's review: no separate "ready" flag).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EndpointState {
    /// QPs are being (re)built; their numbers are not known yet.
    Initializing,
    /// QPs exist (in RESET/INIT) and no handshake is running.
    Unconnected,
    /// A handshake (active, passive, or both) is running.
    Connecting,
    /// Local QPs are at RTS but the peer has not confirmed its own QPs are
    /// ready: connected, yet nothing may be posted.
    ConnectedWaitReadyAck,
    /// Both sides ready: work requests may be posted.
    Connected,
    /// Retired: QPs go to ERR so outstanding work requests flush.
    Destroying,
    /// QPs destroyed; the endpoint is dead.
    Destroyed,
}

impl EndpointState {
    /// Local QPs are connected to the peer (possibly still waiting for the ACK).
    pub fn connected(self) -> bool {
        matches!(
            self,
            EndpointState::ConnectedWaitReadyAck | EndpointState::Connected
        )
    }

    /// Work requests may be posted.
    pub fn ready_to_send(self) -> bool {
        self == EndpointState::Connected
    }

    /// Retired or dead: the endpoint never connects again.
    pub fn retired(self) -> bool {
        matches!(self, EndpointState::Destroying | EndpointState::Destroyed)
    }
}

#[cfg(test)]
mod tests {
    use super::EndpointState::*;

    #[test]
    fn only_connected_is_ready_to_send() {
        for s in [
            Initializing,
            Unconnected,
            Connecting,
            ConnectedWaitReadyAck,
            Connected,
            Destroying,
            Destroyed,
        ] {
            assert_eq!(s.ready_to_send(), s == Connected, "{s:?}");
            assert_eq!(
                s.connected(),
                s == Connected || s == ConnectedWaitReadyAck,
                "{s:?}"
            );
            assert_eq!(s.retired(), s == Destroying || s == Destroyed, "{s:?}");
        }
    }
}
