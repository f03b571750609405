//! `usbdom`: the dom0 command-line tool of usbdom.
//!
//! ```text
//! usbdom list [--backend DOM]
//! usbdom create-controller <frontend-domid> [--ports N] [--version 1|2] [--backend DOM]
//! usbdom attach <frontend> <port> <device-path> [--controller DEVID] [--backend DOM]
//! usbdom detach <frontend> <port> [--controller DEVID] [--backend DOM]
//! usbdom remove-controller <frontend> [--controller DEVID] [--backend DOM]
//! usbdom status [--backend DOM]
//! ```
//! `xl` cannot connect a PV USB controller to a driver domain (it has no `backend=` for usbctrl and
//! libxl refuses `usbdev` for non-dom0 backends; `../shared/reference/pvusb-protocol.md` §2.4), so
//! this tool writes the xenstore nodes itself. DOM is a domain id or name; the default backend is
//! the domain named `usbdom`. `--wait` makes `create-controller` and `attach` wait (10 s at most)
//! until usbdom took the controller or device up. Errors print one line and exit with status 1
//! (2 for usage errors).

#![forbid(unsafe_code)]

mod tool;
mod transport;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use tool::{Tool, ToolError, Wait};
use transport::XsStream;
use xenidc::xenstore::Client;

const USAGE: &str = "usage:
  usbdom list [--backend DOM]
  usbdom create-controller <frontend-domid> [--ports N] [--version 1|2] [--backend DOM]
  usbdom attach <frontend> <port> <device-path> [--controller DEVID] [--backend DOM]
  usbdom detach <frontend> <port> [--controller DEVID] [--backend DOM]
  usbdom remove-controller <frontend> [--controller DEVID] [--backend DOM]
  usbdom status [--backend DOM]
options: --wait (create-controller, attach: wait up to 10 s until usbdom took it up)
         --xenstore PATH (default: /dev/xen/xenbus, then the xenstored socket)";

/// How long one xenstore request waits for its reply, and one polling loop (`--wait`,
/// `remove-controller`) for its condition. Each wait has a budget of its own.
pub const WAIT_BUDGET: Duration = Duration::from_secs(10);
/// Pause between polls of a xenstore reply.
const REPLY_TICK: Duration = Duration::from_millis(1);
/// Pause between polls of a condition.
const POLL_TICK: Duration = Duration::from_millis(100);

/// Time as a [`Deadline`] sees it.
pub trait Clock {
    /// Time since some fixed origin.
    fn now(&self) -> Duration;
    fn sleep(&mut self, d: Duration);
}

/// The real clock.
pub struct SystemClock(Instant);

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.0.elapsed()
    }
    fn sleep(&mut self, d: Duration) {
        std::thread::sleep(d);
    }
}

/// A wait policy whose budget restarts with every wait ([`Wait::begin`]): sleep `tick` between
/// polls, give up once `budget` has passed since the wait began.
pub struct Deadline<K: Clock> {
    pub clock: K,
    pub budget: Duration,
    pub tick: Duration,
    until: Duration,
}

impl<K: Clock> Deadline<K> {
    pub fn new(clock: K, budget: Duration, tick: Duration) -> Self {
        let until = clock.now() + budget;
        Deadline {
            clock,
            budget,
            tick,
            until,
        }
    }
}

impl<K: Clock> Wait for Deadline<K> {
    fn begin(&mut self) {
        self.until = self.clock.now() + self.budget;
    }
    fn more(&mut self) -> bool {
        self.clock.sleep(self.tick);
        self.clock.now() < self.until
    }
}

/// The tool's wait policies on `clock`: (reply wait, polling pause), [`WAIT_BUDGET`] each.
pub fn policies<K: Clock>(clock: impl Fn() -> K) -> (Deadline<K>, Deadline<K>) {
    (
        Deadline::new(clock(), WAIT_BUDGET, REPLY_TICK),
        Deadline::new(clock(), WAIT_BUDGET, POLL_TICK),
    )
}

/// Parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    pub cmd: String,
    pub pos: Vec<String>,
    pub backend: Option<String>,
    pub ports: u32,
    pub version: u32,
    pub controller: u32,
    pub xenstore: Option<String>,
    /// Wait until usbdom took the controller / device up.
    pub wait: bool,
}

/// Parse arguments (without the program name).
pub fn parse_args(argv: &[String]) -> Result<Args, String> {
    let mut a = Args {
        cmd: String::new(),
        pos: Vec::new(),
        backend: None,
        ports: 8,
        version: 2,
        controller: 0,
        xenstore: None,
        wait: false,
    };
    let mut it = argv.iter();
    while let Some(x) = it.next() {
        let mut val = |name: &str| it.next().cloned().ok_or(format!("{name} needs a value"));
        let num = |name: &str, v: String| {
            v.parse::<u32>()
                .map_err(|_| format!("{name}: not a number: {v}"))
        };
        match x.as_str() {
            "--backend" => a.backend = Some(val("--backend")?),
            "--ports" => a.ports = num("--ports", val("--ports")?)?,
            "--version" => a.version = num("--version", val("--version")?)?,
            "--controller" => a.controller = num("--controller", val("--controller")?)?,
            "--xenstore" => a.xenstore = Some(val("--xenstore")?),
            "--wait" => a.wait = true,
            "-h" | "--help" => return Err(String::new()),
            s if s.starts_with("--") => return Err(format!("unknown option {s}")),
            s if a.cmd.is_empty() => a.cmd = s.to_string(),
            s => a.pos.push(s.to_string()),
        }
    }
    let want = match a.cmd.as_str() {
        "list" | "status" => 0,
        "create-controller" | "remove-controller" => 1,
        "attach" => 3,
        "detach" => 2,
        "" => return Err("no command".into()),
        c => return Err(format!("unknown command {c}")),
    };
    if a.pos.len() != want {
        return Err(format!(
            "{}: expected {want} arguments, got {}",
            a.cmd,
            a.pos.len()
        ));
    }
    Ok(a)
}

/// Run a parsed command; returns what to print.
pub fn run<T: xenidc::xenstore::Transport>(t: &mut Tool<T>, a: &Args) -> Result<String, ToolError> {
    let be = t.backend(a.backend.as_deref())?;
    let port = |s: &str| {
        s.parse::<u32>()
            .map_err(|_| ToolError::BadArgument(format!("port: not a number: {s}")))
    };
    match a.cmd.as_str() {
        "list" => t.list(be),
        "status" => t.status(be),
        "create-controller" => {
            let fe = t.domain(&a.pos[0])?;
            let devid = t.create_controller(fe, be, a.ports, a.version)?;
            if a.wait {
                t.wait_backend_ready(fe, devid, be)?;
            }
            Ok(format!(
                "created controller {devid} for domain {fe} ({} ports, USB {}) served by domain {be}\n",
                a.ports,
                if a.version == 1 { "1.1" } else { "2.0" }
            ))
        }
        "attach" => {
            let fe = t.domain(&a.pos[0])?;
            let p = port(&a.pos[1])?;
            t.attach(fe, a.controller, p, &a.pos[2], be)?;
            if a.wait {
                t.wait_attached(fe, a.controller, p, &a.pos[2], be)?;
            }
            Ok(format!(
                "attached {} to domain {fe} controller {} port {p}\n",
                a.pos[2], a.controller
            ))
        }
        "detach" => {
            let fe = t.domain(&a.pos[0])?;
            let p = port(&a.pos[1])?;
            let was = t.detach(fe, a.controller, p, be)?;
            Ok(format!(
                "detached {was} from domain {fe} controller {} port {p}\n",
                a.controller
            ))
        }
        "remove-controller" => {
            let fe = t.domain(&a.pos[0])?;
            let note = t.remove_controller(fe, a.controller, be)?;
            let mut out = format!("removed controller {} of domain {fe}\n", a.controller);
            if let Some(n) = note {
                out = format!("note: {n}\n{out}");
            }
            Ok(out)
        }
        _ => unreachable!("checked by parse_args"),
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse_args(&argv) {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("usbdom: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let (stream, _path) = match XsStream::open(args.xenstore.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("usbdom: {e}");
            return ExitCode::from(1);
        }
    };
    let start = Instant::now();
    let (wait, pause) = policies(|| SystemClock(start));
    let mut t = Tool::new(Client::new(stream), wait, pause);
    match run(&mut t, &args) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("usbdom: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_backend;
