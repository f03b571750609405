//! Where the time of one 4 KiB read goes (issue 17's breakdown): the frontend's own timestamps of
//! its URBs (dom0's usbmon, text interface: `S` submit / `C` complete per URB, in µs) beside
//! usbdom's per-transfer trace (`usbdom.trace=1`: taken off the ring → submitted → done →
//! response published, Xen system time). The two clocks are not aligned; only intervals are
//! compared: for each URB, what the frontend waited (S→C), how much of it usbdom accounts for
//! (ring → response), and the rest (the frontend's submit path and notification, the domain
//! switches, the response's way back to the frontend's completion).

/// One URB as usbmon saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct MonUrb {
    /// Endpoint type and direction (`Bo`, `Bi`, `Co`, `Ci`, `Ii`, ...), bus, endpoint.
    pub kind: String,
    pub bus: u32,
    pub ep: u8,
    pub len: u32,
    pub submit_us: u64,
    pub complete_us: u64,
}

/// usbmon text lines (`<tag> <us> S|C <kind>:<bus>:<dev>:<ep> <status> <len> ...`), paired by
/// tag into submitted-and-completed URBs, in submit order. Other lines are ignored.
pub fn parse_usbmon<'a>(lines: impl IntoIterator<Item = &'a str>) -> Vec<MonUrb> {
    let mut open: Vec<(String, MonUrb)> = Vec::new();
    let mut done = Vec::new();
    for l in lines {
        let w: Vec<&str> = l.split_whitespace().collect();
        if w.len() < 6 {
            continue;
        }
        let (Ok(t), ev) = (w[1].parse::<u64>(), w[2]) else {
            continue;
        };
        let addr: Vec<&str> = w[3].split(':').collect();
        if addr.len() != 4 {
            continue;
        }
        let ep = addr[3].parse::<u8>().unwrap_or(0);
        let len = w[5].parse::<u32>().unwrap_or(0);
        match ev {
            "S" => open.push((
                w[0].to_string(),
                MonUrb {
                    kind: addr[0].to_string(),
                    bus: addr[1].parse().unwrap_or(0),
                    ep,
                    len,
                    submit_us: t,
                    complete_us: 0,
                },
            )),
            "C" => {
                if let Some(i) = open.iter().position(|(tag, _)| tag == w[0]) {
                    let (_, mut u) = open.remove(i);
                    u.complete_us = t;
                    done.push(u);
                }
            }
            _ => {}
        }
    }
    done.sort_by_key(|u| u.submit_us);
    done
}

/// One transfer of usbdom's trace line (`urb trace: frontend F id N ep 0xEE len L actual A
/// ring@T us, ring->submit X us, submit->done Y us, done->response Z us`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Traced {
    pub ep: u8,
    pub len: u32,
    pub ring_us: u64,
    pub to_submit_us: u64,
    pub in_controller_us: u64,
    pub to_response_us: u64,
}

impl Traced {
    /// Taken off the ring → response published.
    pub fn inside_us(&self) -> u64 {
        self.to_submit_us + self.in_controller_us + self.to_response_us
    }
}

/// The number after `key` in `s` (`key` included its separator, e.g. `"len "`).
fn num_after(s: &str, key: &str) -> Option<u64> {
    let rest = &s[s.find(key)? + key.len()..];
    let n: String = rest
        .trim_start_matches("0x")
        .chars()
        .take_while(|c| c.is_ascii_hexdigit())
        .collect();
    if rest.starts_with("0x") {
        u64::from_str_radix(&n, 16).ok()
    } else {
        n.chars()
            .take_while(|c| c.is_ascii_digit())
            .collect::<String>()
            .parse()
            .ok()
    }
}

pub fn parse_trace(line: &str) -> Option<Traced> {
    if !line.contains("urb trace: ") {
        return None;
    }
    Some(Traced {
        ep: num_after(line, " ep ")? as u8,
        len: num_after(line, " len ")? as u32,
        ring_us: num_after(line, "ring@")?,
        to_submit_us: num_after(line, "ring->submit ")?,
        in_controller_us: num_after(line, "submit->done ")?,
        to_response_us: num_after(line, "done->response ")?,
    })
}

/// The last read of a QD1 run: CBW (bulk OUT, 31 bytes), data (bulk IN, `data_len`), CSW (bulk
/// IN, 13 bytes), consecutive in `urbs`.
pub fn last_read<T>(
    urbs: &[T],
    dir_len: impl Fn(&T) -> (bool, u32),
    data_len: u32,
) -> Option<&[T]> {
    (0..urbs.len().saturating_sub(2)).rev().find_map(|i| {
        let w = &urbs[i..i + 3];
        let k: Vec<(bool, u32)> = w.iter().map(&dir_len).collect();
        (k == [(false, 31), (true, data_len), (true, 13)]).then_some(w)
    })
}

fn mon_dir_len(u: &MonUrb) -> (bool, u32) {
    (u.kind.ends_with('i'), u.len)
}

fn traced_dir_len(t: &Traced) -> (bool, u32) {
    (t.ep & 0x80 != 0, t.len)
}

/// The breakdown table of the last 4 KiB read, one line per URB and per gap, from the frontend's
/// usbmon URBs and (through usbdom) usbdom's trace; `None` when no whole read is found.
pub fn render(mon: &[MonUrb], traced: &[Traced]) -> Option<Vec<String>> {
    let read = last_read(mon, mon_dir_len, 4096)?;
    let inside = last_read(traced, traced_dir_len, 4096);
    let mut out = vec![format!(
        "{:10} {:>10} {:>12} {:>12} {:>12} {:>12} {:>10}",
        "urb", "frontend", "ring->subm", "in ctrl", "done->resp", "usbdom", "outside"
    )];
    let names = ["CBW", "data 4K", "CSW"];
    for (i, u) in read.iter().enumerate() {
        if i > 0 {
            out.push(format!(
                "{:10} {:>10}",
                "  (gap)",
                u.submit_us.saturating_sub(read[i - 1].complete_us)
            ));
        }
        let total = u.complete_us.saturating_sub(u.submit_us);
        match inside.map(|t| t[i]) {
            Some(t) => out.push(format!(
                "{:10} {:>10} {:>12} {:>12} {:>12} {:>12} {:>10}",
                names[i],
                total,
                t.to_submit_us,
                t.in_controller_us,
                t.to_response_us,
                t.inside_us(),
                total as i64 - t.inside_us() as i64
            )),
            None => out.push(format!("{:10} {:>10}", names[i], total)),
        }
    }
    out.push(format!(
        "{:10} {:>10}",
        "read",
        read[2].complete_us.saturating_sub(read[0].submit_us)
    ));
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MON: &str = "\
ffff1 100 S Bo:1:002:2 -115 31 = 55534243
ffff1 250 C Bo:1:002:2 0 31 >
ffff2 260 S Bi:1:002:1 -115 4096 <
ffff2 900 C Bi:1:002:1 0 4096 = 00000000
ffff3 930 S Bi:1:002:1 -115 13 <
ffff3 1200 C Bi:1:002:1 0 13 = 55534253
ffff4 1300 S Bo:1:002:2 -115 31 = 55534243";

    #[test]
    fn usbmon_lines_pair_by_tag() {
        let m = parse_usbmon(MON.lines());
        assert_eq!(m.len(), 3, "the open fourth one is not a URB yet");
        assert_eq!((m[1].kind.as_str(), m[1].ep, m[1].len), ("Bi", 1, 4096));
        assert_eq!((m[1].submit_us, m[1].complete_us), (260, 900));
    }

    #[test]
    fn trace_lines_parse() {
        let t = parse_trace("U| [  40.1] INFO  backend: urb trace: frontend 0 id 7 ep 0x81 len 4096 actual 4096 ring@123456 us, ring->submit 60 us, submit->done 200 us, done->response 30 us").unwrap();
        assert_eq!(
            t,
            Traced {
                ep: 0x81,
                len: 4096,
                ring_us: 123456,
                to_submit_us: 60,
                in_controller_us: 200,
                to_response_us: 30
            }
        );
        assert_eq!(t.inside_us(), 290);
        assert!(parse_trace("INFO backend: loop: 3 busy rounds").is_none());
    }

    #[test]
    fn the_last_read_is_broken_down() {
        let m = parse_usbmon(MON.lines());
        let tr = |ep, len, a, b, c| Traced {
            ep,
            len,
            ring_us: 0,
            to_submit_us: a,
            in_controller_us: b,
            to_response_us: c,
        };
        let t = vec![
            tr(0x81, 13, 1, 1, 1),
            tr(0x02, 31, 20, 30, 10),
            tr(0x81, 4096, 50, 300, 40),
            tr(0x81, 13, 40, 100, 20),
        ];
        let out = render(&m, &t).unwrap();
        let text = out.join("\n");
        // CBW: frontend 150 us, usbdom 60, outside 90.
        assert!(
            out[1].starts_with("CBW") && out[1].ends_with("90"),
            "{text}"
        );
        assert!(out[2].contains("(gap)") && out[2].ends_with("10"), "{text}");
        // data: 640 us, usbdom 390 → 250 outside.
        assert!(out[3].contains("390") && out[3].ends_with("250"), "{text}");
        assert!(
            out[6].starts_with("read") && out[6].ends_with("1100"),
            "{text}"
        );
        // Without usbdom's side (direct), the frontend's column alone.
        let direct = render(&m, &[]).unwrap();
        assert_eq!(direct.len(), 7);
        assert!(direct[1].trim_end().ends_with("150"));
        assert!(render(&m[..2], &t).is_none());
    }
}
