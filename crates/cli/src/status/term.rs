//! The terminal, kept thin: enter the alternate screen with the cursor
//! hidden, draw a frame of lines over the previous one, and put everything
//! back — on [`Screen::leave`] or when the [`Screen`] is dropped, so an
//! error return or a panic restores the terminal too.
//!
//! crossterm does the escape sequences and reads the size (on Windows as
//! well). No raw mode: Ctrl-C stays the terminal's interrupt, which the
//! command's signal handler turns into a clean shutdown.

use std::io::{self, Stdout, Write};

use crossterm::{QueueableCommand, cursor, style, terminal};

/// The size assumed when the terminal does not say (a pseudo-terminal
/// nobody has sized): the classic 80 x 24.
const FALLBACK: (usize, usize) = (80, 24);

/// The alternate screen while the view is up.
pub struct Screen {
    out: Stdout,
    active: bool,
}

impl Screen {
    /// Switches to the alternate screen and hides the cursor.
    pub fn enter() -> io::Result<Screen> {
        let mut out = io::stdout();
        out.queue(terminal::EnterAlternateScreen)?
            .queue(cursor::Hide)?
            .queue(terminal::Clear(terminal::ClearType::All))?;
        out.flush()?;
        Ok(Screen { out, active: true })
    }

    /// Draws `lines` from the top left, each over what was there, and
    /// clears the rest of a screen `height` rows tall. Does nothing once
    /// left.
    pub fn draw(&mut self, lines: &[String], height: usize) -> io::Result<()> {
        if !self.active {
            return Ok(());
        }
        // The whole frame in one write, so the terminal is not caught
        // showing half of it.
        let mut frame = Vec::with_capacity(lines.iter().map(|l| l.len() + 16).sum());
        for (row, line) in (0u16..).zip(lines) {
            frame
                .queue(cursor::MoveTo(0, row))?
                .queue(style::Print(line))?
                .queue(terminal::Clear(terminal::ClearType::UntilNewLine))?;
        }
        if lines.len() < height {
            // Below the last row the cursor would stay on it, and clearing
            // "down" from there would erase it.
            let below = u16::try_from(lines.len()).unwrap_or(u16::MAX);
            frame
                .queue(cursor::MoveTo(0, below))?
                .queue(terminal::Clear(terminal::ClearType::FromCursorDown))?;
        }
        let mut out = self.out.lock();
        out.write_all(&frame)?;
        out.flush()
    }

    /// Leaves the alternate screen, then prints `lines` on the normal one:
    /// the last frame stays in the terminal after the program ends. Does
    /// nothing once left.
    pub fn leave_showing(&mut self, lines: &[String]) {
        if !self.active {
            return;
        }
        self.leave();
        let mut out = self.out.lock();
        for line in lines {
            let _ = writeln!(out, "{}", line.trim_end());
        }
        let _ = out.flush();
    }

    /// Shows the cursor and leaves the alternate screen: the terminal is as
    /// it was before [`Screen::enter`]. Idempotent.
    pub fn leave(&mut self) {
        if !std::mem::take(&mut self.active) {
            return;
        }
        // Best effort: there is nothing better to do if the terminal is gone.
        let _ = self
            .out
            .queue(cursor::Show)
            .and_then(|out| out.queue(terminal::LeaveAlternateScreen))
            .and_then(|out| out.flush());
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        self.leave();
    }
}

/// The terminal's width and height in characters.
pub fn size() -> (usize, usize) {
    match terminal::size() {
        Ok((w, h)) if w > 0 && h > 0 => (usize::from(w), usize::from(h)),
        _ => FALLBACK,
    }
}
