//! The only place kvmbox talks to the kernel through `unsafe` libc calls.
//! Each block says why it is sound; everything above this module is safe Rust.

/// Restores the default SIGPIPE action, so that a command-line applet whose
/// reader went away (`kvmbox-cert show … | head -1`) ends quietly like any
/// Unix tool instead of failing on EPIPE. Never call it in the daemon, which
/// must see EPIPE on a closed socket rather than die.
pub fn default_sigpipe() {
    // SAFETY: signal() with SIG_DFL installs no handler code; it only changes
    // this process's disposition for SIGPIPE and has no memory effects.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
