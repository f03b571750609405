//! The `log` backend: every console line is `[  secs.micros] LEVEL target: message`.
//! The xtask harness greps these lines, so the format is part of the interface.

use core::fmt::Write;

use crate::console;

struct Logger;

static LOGGER: Logger = Logger;

impl log::Log for Logger {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut line: heapless::String<512> = heapless::String::new();
        let ns = crate::time::now_ns();
        let _ = write!(
            line,
            "[{:5}.{:06}] {:<5} {}: ",
            ns / 1_000_000_000,
            (ns / 1000) % 1_000_000,
            record.level(),
            record.target()
        );
        let header = line.len();
        // Format the message into the line buffer; overlong messages go straight to the console.
        if writeln!(line, "{}", record.args()).is_err() {
            line.truncate(header);
            console::write_str(&line);
            let _ = writeln!(console::Writer, "{}", record.args());
            return;
        }
        console::write_str(&line);
    }

    fn flush(&self) {}
}

/// Install the logger. `max` is the most verbose level printed.
pub fn init(max: log::LevelFilter) {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(max);
}
