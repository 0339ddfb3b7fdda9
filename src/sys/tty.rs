//! The terminal: a secret read without echo, raw mode, the window size.

use std::io::{self, BufRead, Write};

/// Prints `prompt` on stderr and reads one line from stdin (a terminal)
/// with echo switched off; echo is restored even when reading fails.
pub(crate) fn read_secret(prompt: &str) -> io::Result<String> {
    let fd = libc::STDIN_FILENO;
    // SAFETY: an all-zero termios is a valid value to be overwritten by
    // tcgetattr, which is all it is used for.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `saved` is a valid, writable termios; fd 0 is open.
    if unsafe { libc::tcgetattr(fd, &raw mut saved) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut quiet = saved;
    quiet.c_lflag &= !libc::ECHO;
    quiet.c_lflag |= libc::ECHONL;
    eprint!("{prompt}");
    io::stderr().flush()?;
    // SAFETY: `quiet` is a fully initialised termios derived from the
    // terminal's own settings.
    if unsafe { libc::tcsetattr(fd, libc::TCSAFLUSH, &raw const quiet) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut line = String::new();
    let read = io::stdin().lock().read_line(&mut line);
    // SAFETY: restores the settings read above on the same descriptor.
    unsafe { libc::tcsetattr(fd, libc::TCSAFLUSH, &raw const saved) };
    read?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// The terminal on standard input in raw mode (no echo, no line editing,
/// no signals from keys: every byte typed is passed on) until dropped.
#[derive(Debug)]
pub struct RawTerminal(libc::termios);

impl RawTerminal {
    pub fn enter() -> io::Result<RawTerminal> {
        let fd = libc::STDIN_FILENO;
        // SAFETY: an all-zero termios is a valid value to be overwritten by
        // tcgetattr, which is all it is used for.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `saved` is a valid, writable termios; fd 0 is open.
        if unsafe { libc::tcgetattr(fd, &raw mut saved) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut raw = saved;
        // SAFETY: `raw` is a fully initialised termios.
        unsafe { libc::cfmakeraw(&raw mut raw) };
        // SAFETY: `raw` is derived from the terminal's own settings.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw const raw) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(RawTerminal(saved))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in `enter` on the same
        // descriptor.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw const self.0) };
    }
}

/// The (columns, rows) of the terminal on standard output; `None` when it
/// is not a terminal or has no size.
pub fn window_size() -> Option<(u16, u16)> {
    // SAFETY: an all-zero winsize is a valid value for the kernel to fill.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes one winsize to the valid pointer given.
    let r = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &raw mut ws) };
    (r == 0 && ws.ws_col > 0 && ws.ws_row > 0).then_some((ws.ws_col, ws.ws_row))
}
