//! The TLS listener: accept loop, handshake under a timeout, per-connection task, drain.
