//! The command line: parse arguments, call the library, map errors to exit codes.

use std::path::PathBuf;
use std::time::Duration;

use argh::FromArgs;
use xfer::exit;

const EXIT_NOTE: &str = "Exit codes: 0 ok, 1 internal error, 2 usage, 3 network (resolve, connect, bind, \
timeout, connection lost), 4 protocol or verification (not an xfer server, bad header, digest mismatch), \
5 local file (input missing or not a regular file, output directory missing, disk full), \
6 refused by the server (not allowed, bad token, busy), 130 interrupted.";

#[derive(FromArgs)]
/// Serve one file to many clients at once; fetch an exact, BLAKE3-verified copy.
#[argh(
    note = "{command_name} serve input_file/sample.txt      # then, elsewhere:\n{command_name} fetch HOST:4747 output_file/sample.txt"
)]
struct Cli {
    #[argh(subcommand)]
    cmd: Cmd,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum Cmd {
    Serve(ServeArgs),
    Fetch(FetchArgs),
}

#[derive(FromArgs)]
/// Serve FILE to every client that connects. The first line printed is `listening on ADDR:PORT`.
/// Ctrl+C asks whether to keep listening or exit; SIGTERM (or SIGINT without a terminal) stops
/// accepting, lets transfers finish, and exits 0; SIGHUP re-reads the file.
#[argh(subcommand, name = "serve")]
#[argh(note = "Exit codes: 0 ok (drained after Ctrl+C/SIGTERM), 2 usage, 3 cannot bind, 5 input file \
missing, unreadable or not a regular file, 130 second Ctrl+C. The token may come from the \
environment variable XFER_TOKEN instead of --token, which keeps it out of `ps`.")]
struct ServeArgs {
    /// the file to serve (a regular file)
    #[argh(positional)]
    file: PathBuf,
    /// address to listen on, ADDR or ADDR:PORT (default: all interfaces, dual-stack [::], or 0.0.0.0 without IPv6)
    #[argh(option)]
    listen: Option<String>,
    /// port to listen on (default 4747; 0 picks a free port)
    #[argh(option)]
    port: Option<u16>,
    /// do not log a line per finished transfer
    #[argh(switch, short = 'q')]
    quiet: bool,
    /// clients served at once; more are refused as busy (default: from the open-file limit)
    #[argh(option)]
    max_clients: Option<usize>,
    /// clients served at once from one address (default 64)
    #[argh(option, default = "64")]
    max_per_ip: usize,
    /// serve only these addresses, e.g. 10.0.0.0/8 (repeatable; default: everyone)
    #[argh(option)]
    allow: Vec<String>,
    /// require this shared access token (default: $XFER_TOKEN if set)
    #[argh(option)]
    token: Option<String>,
    /// seconds a client has to send its whole request (default 10)
    #[argh(option, default = "10.0")]
    request_timeout: f64,
    /// close a client whose socket took no bytes for this many seconds (default 30)
    #[argh(option, default = "30.0")]
    send_timeout: f64,
    /// on exit, seconds in-flight transfers may take to finish (default 30)
    #[argh(option, default = "30.0")]
    drain_timeout: f64,
    /// event loops sharing the port with SO_REUSEPORT (default 1)
    #[argh(option, default = "1")]
    threads: usize,
}

#[derive(FromArgs)]
/// Fetch the file served at HOST[:PORT] into OUTPUT_FILE, verified by its BLAKE3 digest.
/// Nothing is written to OUTPUT_FILE unless the whole file arrived and matched; use - for stdout.
#[argh(subcommand, name = "fetch")]
#[argh(note = "HOST may be a name, an IPv4 address, or an IPv6 address ([::1]:4747, or ::1 without a port).")]
struct FetchArgs {
    /// server as HOST, HOST:PORT or [IPV6]:PORT
    #[argh(positional)]
    host: String,
    /// where to write the file (its directory must exist), or - for stdout
    #[argh(positional)]
    output_file: PathBuf,
    /// port, when HOST has none (default 4747)
    #[argh(option)]
    port: Option<u16>,
    /// seconds to wait for the connection, and for data while receiving (default 30)
    #[argh(option, default = "30.0")]
    timeout: f64,
    /// access token, when the server requires one (default: $XFER_TOKEN if set)
    #[argh(option)]
    token: Option<String>,
    /// no progress bar and no summary line
    #[argh(switch, short = 'q')]
    quiet: bool,
}

/// Stands for a lone `-` argument while argh parses (it cannot start with `-`).
const STDOUT_MARKER: &str = "\u{1}stdout";

fn main() {
    std::process::exit(real_main());
}

fn real_main() -> i32 {
    let args: Vec<String> = std::env::args().collect();
    let cmd = args.first().map(|a| a.rsplit('/').next().unwrap_or(a)).unwrap_or("xfer").to_string();
    // argh takes a lone `-` for an option; pass it through as a marker for "stdout".
    let rest: Vec<&str> = args.iter().skip(1).map(|a| if a == "-" { STDOUT_MARKER } else { a.as_str() }).collect();
    let cli = match Cli::from_args(&[&cmd], &rest) {
        Ok(cli) => cli,
        Err(early) => {
            return match early.status {
                Ok(()) => {
                    println!("{}\n\n{EXIT_NOTE}", early.output.trim_end());
                    exit::OK
                }
                Err(()) => {
                    let why = early.output.trim_end().replace('\n', "; ");
                    eprintln!("xfer: {why} (see '{cmd} --help')");
                    exit::USAGE
                }
            };
        }
    };
    match cli.cmd {
        Cmd::Serve(a) => serve(a),
        Cmd::Fetch(a) => fetch(a),
    }
}

fn secs(name: &str, v: f64) -> Result<Duration, i32> {
    if v.is_finite() && v > 0.0 && v < 1e9 {
        Ok(Duration::from_secs_f64(v))
    } else {
        eprintln!("xfer: --{name} must be a positive number of seconds");
        Err(exit::USAGE)
    }
}

/// The token from the flag, else from XFER_TOKEN; an empty value means none.
fn token(flag: Option<String>) -> Option<String> {
    // A lone `-` was swapped for the stdout marker before parsing; give it back.
    let flag = flag.map(|t| if t == STDOUT_MARKER { "-".to_string() } else { t });
    flag.or_else(|| std::env::var("XFER_TOKEN").ok()).filter(|t| !t.is_empty())
}

fn serve(a: ServeArgs) -> i32 {
    let durations = (|| {
        Ok::<_, i32>((
            secs("request-timeout", a.request_timeout)?,
            secs("send-timeout", a.send_timeout)?,
            secs("drain-timeout", a.drain_timeout)?,
        ))
    })();
    let (request_timeout, send_timeout, drain_timeout) = match durations {
        Ok(d) => d,
        Err(code) => return code,
    };
    let mut allow = Vec::new();
    for c in &a.allow {
        match c.parse() {
            Ok(c) => allow.push(c),
            Err(e) => {
                eprintln!("xfer: --allow {e}");
                return exit::USAGE;
            }
        }
    }
    if a.threads == 0 || a.max_per_ip == 0 || a.max_clients == Some(0) {
        eprintln!("xfer: --threads, --max-clients and --max-per-ip must be at least 1");
        return exit::USAGE;
    }
    let opts = xfer::serve::Options {
        file: a.file,
        listen: a.listen,
        port: a.port.unwrap_or(xfer::DEFAULT_PORT),
        quiet: a.quiet,
        max_clients: a.max_clients,
        max_per_ip: a.max_per_ip,
        allow,
        token: token(a.token),
        request_timeout,
        send_timeout,
        drain_timeout,
        threads: a.threads,
    };
    match xfer::serve::run(&opts) {
        Ok(xfer::reactor::Exit::Drained) => exit::OK,
        Ok(xfer::reactor::Exit::Interrupted) => exit::INTERRUPTED,
        Err(e) => {
            eprintln!("xfer: serve: {e}");
            e.exit_code()
        }
    }
}

fn fetch(a: FetchArgs) -> i32 {
    let timeout = match secs("timeout", a.timeout) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let opts = xfer::fetch::Options {
        target: a.host,
        port: a.port,
        output: if a.output_file.as_os_str() == STDOUT_MARKER { PathBuf::from("-") } else { a.output_file },
        timeout,
        token: token(a.token),
        quiet: a.quiet,
    };
    match xfer::fetch::run(&opts) {
        Ok(_) => exit::OK,
        Err(xfer::fetch::FetchError::StdoutClosed) => exit::OK,
        Err(e) => {
            eprintln!("xfer: fetch: {e}");
            e.exit_code()
        }
    }
}
