//! The binary under a pseudo-terminal, as a person runs it. util-linux
//! `script` provides the terminal (no pty crate, no `unsafe`), sized with
//! `stty`; its stdin is the keyboard (`\x03` is Ctrl-C, turned into SIGINT
//! by the terminal itself). A small screen model replays what the program
//! draws, so that tests read the screen, not escape sequences.

use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Instant;

use cryptun_testkit::LIMIT;

/// A program running on a terminal of its own.
pub struct Tty {
    child: Child,
    keys: ChildStdin,
    chunks: mpsc::Receiver<Vec<u8>>,
    /// Everything written to the terminal so far.
    pub raw: Vec<u8>,
    cols: usize,
    rows: usize,
}

impl Tty {
    /// Starts `cryptun ARGS` on a `cols` x `rows` terminal, the inspector
    /// off unless `args` say otherwise.
    pub fn cryptun(args: &[&str], cols: usize, rows: usize) -> Tty {
        Tty::cryptun_with_env(args, &[], cols, rows)
    }

    /// [`Tty::cryptun`] with environment variables `env` set too.
    pub fn cryptun_with_env(args: &[&str], env: &[(&str, &str)], cols: usize, rows: usize) -> Tty {
        let quoted: Vec<String> = std::iter::once(env!("CARGO_BIN_EXE_cryptun"))
            .chain(args.iter().copied())
            .map(|arg| format!("'{}'", arg.replace('\'', r"'\''")))
            .collect();
        // `tty` names the terminal first, for `resize`.
        let line = format!(
            "tty && stty cols {cols} rows {rows} && exec {}",
            quoted.join(" ")
        );
        let mut child = Command::new("script")
            .args(["-qfec", &line, "/dev/null"])
            .env("CRYPTUN_INSPECT", "off")
            .env("TERM", "xterm-256color")
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("util-linux `script` runs (Debian: bsdutils)");
        let keys = child.stdin.take().expect("piped stdin");
        let mut out = child.stdout.take().expect("piped stdout");
        let (tx, chunks) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n @ 1..) = out.read(&mut buf) {
                if tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Tty {
            child,
            keys,
            chunks,
            raw: Vec::new(),
            cols,
            rows,
        }
    }

    /// The screen as drawn so far.
    pub fn screen(&self) -> Screen {
        Screen::replay(&self.raw, self.cols, self.rows)
    }

    /// Reads output until `done` holds for the screen, within [`LIMIT`].
    /// Blocks the thread: call it from a multi-threaded runtime's
    /// `block_in_place`, or outside any runtime.
    pub fn wait_for(&mut self, what: &str, done: impl Fn(&Screen) -> bool) -> Screen {
        self.read_until(what, |tty| {
            let screen = tty.screen();
            done(&screen).then_some(screen)
        })
    }

    /// Reads output until a whole line of it contains `needle`, within
    /// [`LIMIT`], and returns that line.
    pub fn wait_for_line(&mut self, needle: &str) -> String {
        self.read_until(needle, |tty| {
            let text = tty.text();
            let mut lines: Vec<&str> = text.split("\r\n").collect();
            lines.pop(); // not ended yet
            lines
                .into_iter()
                .find(|l| l.contains(needle))
                .map(str::to_owned)
        })
    }

    fn read_until<T>(&mut self, what: &str, found: impl Fn(&Tty) -> Option<T>) -> T {
        let deadline = Instant::now() + LIMIT;
        loop {
            if let Some(found) = found(self) {
                return found;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.chunks.recv_timeout(left) {
                Ok(chunk) => self.raw.extend_from_slice(&chunk),
                Err(_) => panic!("{what}: not shown within {LIMIT:?}:\n{}", self.screen()),
            }
        }
    }

    /// Reads output until it contains `needle`, within [`LIMIT`].
    pub fn wait_for_text(&mut self, needle: &str) {
        self.read_until(needle, |tty| tty.text().contains(needle).then_some(()));
    }

    /// Resizes the terminal, as a window manager does: the program gets
    /// SIGWINCH.
    pub fn resize(&mut self, cols: usize, rows: usize) {
        let device = self.wait_for_line("/dev/pts/");
        let status = Command::new("stty")
            .args(["-F", device.trim()])
            .args(["cols", &cols.to_string(), "rows", &rows.to_string()])
            .status()
            .expect("stty runs");
        assert!(status.success(), "stty -F {device} failed");
        (self.cols, self.rows) = (cols, rows);
    }

    /// Types `keys` (`b"\x03"` is Ctrl-C).
    pub fn type_keys(&mut self, keys: &[u8]) {
        self.keys.write_all(keys).expect("the terminal takes input");
        self.keys.flush().expect("the terminal takes input");
    }

    /// Reads the rest of the output and waits for the exit, within [`LIMIT`].
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.chunks.recv_timeout(left) {
                Ok(chunk) => self.raw.extend_from_slice(&chunk),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("still running after {LIMIT:?}:\n{}", self.screen())
                }
            }
        }
        self.child.wait().expect("waiting for the program")
    }

    /// Reads output until what has been written so far ends with `end`
    /// (the last sequence of a frame, say), within [`LIMIT`].
    pub fn wait_for_end(&mut self, end: &str) {
        self.read_until(end, |tty| tty.raw.ends_with(end.as_bytes()).then_some(()));
    }

    /// Asserts that the program writes nothing for `quiet`.
    pub fn assert_quiet_for(&mut self, quiet: std::time::Duration) {
        if let Ok(chunk) = self.chunks.recv_timeout(quiet) {
            panic!(
                "wrote {:?} while nothing changed",
                String::from_utf8_lossy(&chunk)
            );
        }
    }

    /// The output as text, escape sequences included.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.raw).into_owned()
    }
}

impl Drop for Tty {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a terminal shows after the output so far: the normal and the
/// alternate screen, which one is up, and whether the cursor is visible.
/// It knows the sequences the view uses (cursor position, clear line,
/// clear below, clear all, alternate screen, cursor visibility); others
/// are skipped.
pub struct Screen {
    main: Vec<Vec<char>>,
    alt: Vec<Vec<char>>,
    /// The alternate screen is up.
    pub alternate: bool,
    /// The cursor is visible.
    pub cursor_visible: bool,
    row: usize,
    col: usize,
}

impl Screen {
    fn replay(raw: &[u8], cols: usize, rows: usize) -> Screen {
        let blank = vec![vec![' '; cols]; rows];
        let mut s = Screen {
            main: blank.clone(),
            alt: blank,
            alternate: false,
            cursor_visible: true,
            row: 0,
            col: 0,
        };
        let text = String::from_utf8_lossy(raw);
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\x1b' if chars.peek() == Some(&'[') => {
                    chars.next();
                    let mut params = String::new();
                    let mut last = None;
                    for c in chars.by_ref() {
                        if ('\x40'..='\x7e').contains(&c) {
                            last = Some(c);
                            break;
                        }
                        params.push(c);
                    }
                    if let Some(last) = last {
                        s.csi(&params, last);
                    }
                }
                '\x1b' => {
                    chars.next();
                }
                '\r' => s.col = 0,
                '\n' => s.line_feed(),
                c if c.is_control() => {}
                c => s.put(c),
            }
        }
        s
    }

    fn grid(&mut self) -> &mut Vec<Vec<char>> {
        if self.alternate {
            &mut self.alt
        } else {
            &mut self.main
        }
    }

    fn csi(&mut self, params: &str, last: char) {
        let n = |i: usize| -> usize {
            params
                .split(';')
                .nth(i)
                .and_then(|p| p.parse().ok())
                .unwrap_or(1)
        };
        let (row, col) = (self.row, self.col);
        match (params, last) {
            (_, 'H') => (self.row, self.col) = (n(0).saturating_sub(1), n(1).saturating_sub(1)),
            ("" | "0", 'K') => self.clear(row, col..usize::MAX),
            ("" | "0", 'J') => {
                self.clear(row, col..usize::MAX);
                let rows = self.grid().len();
                (row + 1..rows).for_each(|r| self.clear(r, 0..usize::MAX));
            }
            ("2", 'J') => {
                let rows = self.grid().len();
                (0..rows).for_each(|r| self.clear(r, 0..usize::MAX));
            }
            ("?1049", 'h') => {
                self.alternate = true;
                let rows = self.grid().len();
                (0..rows).for_each(|r| self.clear(r, 0..usize::MAX));
            }
            ("?1049", 'l') => self.alternate = false,
            ("?25", 'h') => self.cursor_visible = true,
            ("?25", 'l') => self.cursor_visible = false,
            _ => {}
        }
    }

    fn clear(&mut self, row: usize, cols: std::ops::Range<usize>) {
        if let Some(line) = self.grid().get_mut(row) {
            let end = cols.end.min(line.len());
            for cell in line.iter_mut().take(end).skip(cols.start) {
                *cell = ' ';
            }
        }
    }

    fn line_feed(&mut self) {
        let rows = self.grid().len();
        if self.row + 1 < rows {
            self.row += 1;
        } else {
            let cols = self.grid()[0].len();
            let grid = self.grid();
            grid.remove(0);
            grid.push(vec![' '; cols]);
        }
    }

    fn put(&mut self, c: char) {
        // Past the last column, text wraps onto the next row.
        if self.col >= self.grid()[0].len() {
            self.col = 0;
            self.line_feed();
        }
        let (row, col) = (self.row, self.col);
        if let Some(cell) = self.grid().get_mut(row).and_then(|l| l.get_mut(col)) {
            *cell = c;
        }
        self.col += 1;
    }

    /// The rows of the screen that is up, without trailing spaces.
    pub fn lines(&self) -> Vec<String> {
        let grid = if self.alternate {
            &self.alt
        } else {
            &self.main
        };
        grid.iter()
            .map(|l| l.iter().collect::<String>().trim_end().to_owned())
            .collect()
    }

    /// The first row starting with `prefix`.
    pub fn line(&self, prefix: &str) -> Option<String> {
        self.lines().into_iter().find(|l| l.starts_with(prefix))
    }
}

impl std::fmt::Display for Screen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let which = if self.alternate {
            "alternate"
        } else {
            "normal"
        };
        writeln!(f, "--- {which} screen ---")?;
        for line in self.lines() {
            writeln!(f, "|{line}")?;
        }
        write!(f, "---")
    }
}
