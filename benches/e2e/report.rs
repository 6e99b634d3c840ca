//! The report: the rows the phases add (metric, xfer, peer, ratio, target, result), the
//! table they are printed as at the end, the formatting of sizes, and the exit status (1 when
//! xfer could not be benchmarked in a phase that needs it).
//!
//! It only lays out strings and numbers it is given; it must never know how a figure was
//! measured, which server produced it, or which phases exist.

use std::time::Instant;

pub struct Row {
    metric: String,
    xfer: String,
    peer: String,
    ratio: String,
    target: String,
    result: String,
}

/// A row; a ratio that is not finite shows as "–", and so does a result that was not judged.
pub fn row(metric: &str, xfer: String, peer: String, ratio: Option<f64>, target: &str, pass: Option<bool>) -> Row {
    Row {
        metric: metric.into(),
        xfer,
        peer,
        ratio: ratio.filter(|r| r.is_finite()).map(|r| format!("{r:.2}×")).unwrap_or_else(|| "–".into()),
        target: target.into(),
        result: match pass {
            Some(true) => "pass".into(),
            Some(false) => "MISS".into(),
            None => "–".into(),
        },
    }
}

/// A row shown for information: "(info) " before the metric, no target, not judged.
pub fn info_row(metric: &str, xfer: String, peer: String, ratio: Option<f64>) -> Row {
    row(&format!("(info) {metric}"), xfer, peer, ratio, "(none)", None)
}

/// A cell with no figure, and why.
pub fn na(why: &str) -> String {
    format!("n/a ({why})")
}

/// The middle value (the upper one of an even count); NaN when nothing was timed.
pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// A figure taken several times: its median, and its range when there is more than one,
/// e.g. "0.352 s (0.340–0.371)"; `fmt` formats one value without its unit, `unit` follows.
pub fn spread(v: &[f64], fmt: impl Fn(f64) -> String, unit: &str) -> String {
    let mut v = v.to_vec();
    let m = median(&mut v);
    if v.is_empty() {
        return na("failed or skipped");
    }
    if v.len() == 1 {
        return format!("{}{unit}", fmt(m));
    }
    format!("{}{unit} ({}–{})", fmt(m), fmt(v[0]), fmt(v[v.len() - 1]))
}

pub fn fmt_bytes(b: f64) -> String {
    if b.abs() >= 1e6 {
        format!("{:.2} MB", b / 1e6)
    } else if b.abs() >= 1e4 {
        format!("{:.1} KB", b / 1e3)
    } else {
        format!("{b:.0} B")
    }
}

/// What the phases found: the rows of the table, and the reasons xfer could not be measured.
pub struct Results {
    rows: Vec<Row>,
    fatal: Vec<String>,
    started: Instant,
}

impl Results {
    pub fn new() -> Results {
        Results { rows: Vec::new(), fatal: Vec::new(), started: Instant::now() }
    }

    pub fn push(&mut self, r: Row) {
        self.rows.push(r);
    }

    /// xfer could not be measured in a phase that needs it: the bench will exit 1.
    pub fn fatal(&mut self, e: String) {
        self.fatal.push(e);
    }

    /// Prints the table and the total time; exits 1 when xfer failed somewhere.
    pub fn finish(self, scale_label: &str) {
        println!(
            "## results (ratio = xfer ÷ peer; in the `vs curl -o + b3sum` rows it is curl's time ÷ xfer's, a speed-up)"
        );
        println!();
        print_table(&self.rows);
        println!();
        println!("total bench time {:.1} s (scale {scale_label})", self.started.elapsed().as_secs_f64());
        if !self.fatal.is_empty() {
            eprintln!("xfer could not be benchmarked in some phases:");
            for e in &self.fatal {
                eprintln!("  {e}");
            }
            std::process::exit(1);
        }
    }
}

/// A Markdown table, columns padded to their widest cell (counted in chars: µ and × are one).
fn print_table(rows: &[Row]) {
    let head = ["metric", "xfer", "peer", "ratio", "target", "result"];
    let cells: Vec<[&str; 6]> =
        rows.iter().map(|r| [&*r.metric, &*r.xfer, &*r.peer, &*r.ratio, &*r.target, &*r.result]).collect();
    let mut w = head.map(|h| h.chars().count());
    for c in &cells {
        for i in 0..6 {
            w[i] = w[i].max(c[i].chars().count());
        }
    }
    let line = |c: [&str; 6]| {
        let mut s = String::from("|");
        for i in 0..6 {
            let pad = w[i] - c[i].chars().count();
            s.push(' ');
            s.push_str(c[i]);
            s.push_str(&" ".repeat(pad));
            s.push_str(" |");
        }
        s
    };
    println!("{}", line(head));
    let sep: Vec<String> = w.iter().map(|n| "-".repeat(n + 2)).collect();
    println!("|{}|", sep.join("|"));
    for c in cells {
        println!("{}", line(c));
    }
}
