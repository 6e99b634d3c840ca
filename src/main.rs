//! The command line: parse arguments, call the library, map errors to exit codes.
//!
//! argh parses `&str` arguments and takes anything that starts with `-` for an option. Two
//! kinds of argument do not fit that: paths that are not UTF-8 (legal on Unix), and a lone
//! `-` (stdout for fetch's output, a file named `-` elsewhere). Both are carried through
//! argh losslessly by [`escape_arg`], and every field that can hold them decodes them back
//! with [`unescape_arg`], so no placeholder ever reaches the user.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::time::Duration;

use argh::FromArgs;
use xfer::encoding::text::printable;
use xfer::exit;

/// The one list of exit codes, shown by every `--help` (README has the same table).
const EXIT_CODES: &str = "\
Exit codes:
  0    success (for serve: drained and exited after Ctrl+C or SIGTERM)
  1    internal error
  2    usage: bad arguments
  3    network: cannot resolve, connect or bind; timed out; connection lost; HTTP 5xx
  4    protocol or verification: not an xfer server, malformed header, digest mismatch,
       a server that failed to prove the token, HTTP 404 and other 4xx, an unusable file
       name from the server
  5    local file: input missing, unreadable or not a regular file; bad output path; disk
       full; the output locked by another fetch
  6    refused by the server: not allowed, bad token, busy, paused, unsupported version;
       HTTP 401, 403, 407, 429
  129  fetch: interrupted by SIGHUP (the terminal closed)
  130  fetch: interrupted by Ctrl+C (SIGINT); serve: a second Ctrl+C or signal while draining
  143  fetch: interrupted by SIGTERM
After retries run out, fetch exits with the last failure's code.";

#[derive(FromArgs)]
/// Serve one file to many clients at once; fetch an exact, BLAKE3-verified copy.
#[argh(
    help_triggers("-h", "--help"),
    note = "Run `{command_name} serve --help` or `{command_name} fetch --help` for the options of each.\n\n\
{command_name} serve input_file/sample.txt       # then, elsewhere:\n\
{command_name} fetch HOST:4747 output_file/sample.txt"
)]
struct Cli {
    /// print the version and exit
    #[argh(switch, short = 'V')]
    version: bool,
    #[argh(subcommand)]
    cmd: Option<Cmd>,
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
#[argh(subcommand, name = "serve", help_triggers("-h", "--help"))]
#[argh(note = "The token is best given with --token-file (or the environment variable XFER_TOKEN): a \
value after --token is visible to other users in `ps`. --token generate makes a random 256-bit token \
and prints it once. With a token, native clients prove it by challenge-response and the server proves \
it back (docs/SECURITY.md); HTTP clients send `Authorization: Bearer TOKEN`, or use a signed link \
(--link-ttl).")]
struct ServeArgs {
    /// the file to serve (a regular file)
    #[argh(positional, from_str_fn(path_arg))]
    file: PathBuf,
    /// address to listen on: ADDR, ADDR:PORT, [IPV6]:PORT, a host name, or fe80::1%IFACE
    /// (default: all interfaces, dual-stack [::], or 0.0.0.0 without IPv6)
    #[argh(option, from_str_fn(text_arg))]
    listen: Option<String>,
    /// port to listen on (default 4747; 0 picks a free port)
    #[argh(option, from_str_fn(port_arg))]
    port: Option<u16>,
    /// do not log a line per finished transfer
    #[argh(switch, short = 'q')]
    quiet: bool,
    /// clients served at once; more are refused as busy (default: from the open-file limit)
    #[argh(option, from_str_fn(count_arg))]
    max_clients: Option<usize>,
    /// clients served at once from one address; more are refused as busy (default: no limit)
    #[argh(option, from_str_fn(count_arg))]
    max_per_ip: Option<usize>,
    /// serve only these addresses, e.g. 10.0.0.0/8 (repeatable; default: everyone)
    #[argh(option, from_str_fn(text_arg))]
    allow: Vec<String>,
    /// require this shared access token, or `generate` one (default: $XFER_TOKEN if set)
    #[argh(option, from_str_fn(os_arg))]
    token: Option<OsString>,
    /// read the token from this file (its first line)
    #[argh(option, from_str_fn(path_arg))]
    token_file: Option<PathBuf>,
    /// print HTTP links, signed with the token, that work without it for this many seconds
    #[argh(option, from_str_fn(secs_arg))]
    link_ttl: Option<Duration>,
    /// seconds a client has to send its whole request (default 10)
    #[argh(option, default = "secs(10.0)", from_str_fn(secs_arg))]
    request_timeout: Duration,
    /// close a client whose socket took no bytes for this many seconds (default 30)
    #[argh(option, default = "secs(30.0)", from_str_fn(secs_arg))]
    send_timeout: Duration,
    /// on exit, seconds in-flight transfers may take to finish (default 30)
    #[argh(option, default = "secs(30.0)", from_str_fn(secs_arg))]
    drain_timeout: Duration,
    /// event loops sharing the listening socket (default 1)
    #[argh(option, default = "1", from_str_fn(threads_arg))]
    threads: usize,
    /// HTTP: seconds shared caches may reuse a response before revalidating it (default
    /// 10; 0 sends no-cache)
    #[argh(option, default = "10", from_str_fn(max_age_arg))]
    max_age: u32,
}

#[derive(FromArgs)]
/// Fetch the file from an xfer server (HOST[:PORT]) or any HTTP server (http://HOST[:PORT]/PATH)
/// into OUTPUT, verified by its digest. Nothing is written to OUTPUT unless the whole file
/// arrived and matched. An interrupted fetch keeps what it got and the same command resumes it.
#[argh(subcommand, name = "fetch", help_triggers("-h", "--help"))]
#[argh(note = "HOST is a name, an IPv4 address, or an IPv6 address ([::1]:4747, ::1 without a port, \
fe80::1%eth0 with a zone). OUTPUT may be a file (an existing one keeps its permissions; a symbolic link \
is followed and the file it points to is replaced; a device or FIFO is written straight into), - for \
stdout, or a directory (or nothing: the current one), where the file is saved under the server's name. \
Transient failures (busy, connection lost, timeout, HTTP 5xx) are retried with backoff, resuming \
where the last attempt stopped. With a token (best in a file: --token-file), an xfer server proves \
it knows the token too, by challenge-response; the token itself never crosses the wire, and a \
server that cannot prove it is refused (docs/SECURITY.md).")]
struct FetchArgs {
    /// server as HOST, HOST:PORT, [IPV6]:PORT, or an http:// URL
    #[argh(positional, from_str_fn(text_arg))]
    host: String,
    /// where to write the file: a file, a directory, or - for stdout (default: the current
    /// directory, under the server's name)
    #[argh(positional, from_str_fn(path_arg))]
    output: Option<PathBuf>,
    /// port, when HOST has none (default 4747)
    #[argh(option, from_str_fn(port_arg))]
    port: Option<u16>,
    /// seconds to wait for the connection, and the longest silence while receiving (default 30)
    #[argh(option, default = "secs(30.0)", from_str_fn(secs_arg))]
    timeout: Duration,
    /// access token, when the server requires one (default: $XFER_TOKEN if set)
    #[argh(option, from_str_fn(os_arg))]
    token: Option<OsString>,
    /// read the token from this file (its first line)
    #[argh(option, from_str_fn(path_arg))]
    token_file: Option<PathBuf>,
    /// the digest the file must have, ALGORITHM:HEX with blake3 or sha256 (repeatable);
    /// checked whatever the server says
    #[argh(option, from_str_fn(expect_arg))]
    expect: Vec<xfer::fetch::verify::Expect>,
    /// how many times to retry a transient failure (default 5; 0: never)
    #[argh(option, default = "5", from_str_fn(retry_arg))]
    retry: u32,
    /// stop retrying once this many seconds have passed since the start (default: no bound)
    #[argh(option, from_str_fn(secs_arg))]
    retry_for: Option<Duration>,
    /// never keep a partial file, and never resume one
    #[argh(switch)]
    no_resume: bool,
    /// no progress bar and no summary line
    #[argh(switch, short = 'q')]
    quiet: bool,
}

fn main() {
    std::process::exit(real_main());
}

fn real_main() -> i32 {
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_else(|| "xfer".into());
    let cmd = PathBuf::from(argv0).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or("xfer".into());
    let escaped: Vec<String> = args.map(|a| escape_arg(&a)).collect();
    let rest: Vec<&str> = escaped.iter().map(String::as_str).collect();
    let cli = match Cli::from_args(&[&cmd], &rest) {
        Ok(cli) => cli,
        Err(early) => {
            return match early.status {
                Ok(()) => {
                    xfer::say_out(format_args!("{}\n\n{EXIT_CODES}\n", early.output.trim_end()));
                    exit::OK
                }
                Err(()) => usage_error(&cmd, &rest, &early.output),
            };
        }
    };
    if cli.version {
        xfer::say_out(format_args!("{cmd} {}\n", env!("CARGO_PKG_VERSION")));
        return exit::OK;
    }
    match cli.cmd {
        Some(Cmd::Serve(a)) => serve(a),
        Some(Cmd::Fetch(a)) => fetch(a),
        None => {
            xfer::say!("{cmd}: missing command: serve or fetch (see '{cmd} --help')");
            exit::USAGE
        }
    }
}

/// Turns argh's multi-line error into one line that names the subcommand's help.
fn usage_error(cmd: &str, args: &[&str], argh_output: &str) -> i32 {
    let sub = args.iter().find(|a| matches!(**a, "serve" | "fetch"));
    let (prefix, help) = match sub {
        Some(s) => (format!("{cmd}: {s}"), format!("{cmd} {s} --help")),
        None => (cmd.to_string(), format!("{cmd} --help")),
    };
    let text = argh_output.trim();
    let why = if let Some(list) = text.strip_prefix("Required positional arguments not provided:") {
        let names: Vec<String> = list.split_whitespace().map(|n| n.to_uppercase()).collect();
        format!("missing {}", names.join(" and "))
    } else if text.starts_with("One of the following subcommands must be present") {
        "missing command: serve or fetch".to_string()
    } else if let Some(arg) = text.strip_prefix("Unrecognized argument: ") {
        let arg = arg.split(". Did you mean").next().unwrap_or(arg).trim_matches('"');
        format!("unknown argument `{}`", shown(arg))
    } else if let Some(opt) = text.strip_prefix("No value provided for option '") {
        format!("{} needs a value", opt.trim_end_matches(['.', '\'']))
    } else if let Some(rest) = text.strip_prefix("Error parsing option '") {
        // "Error parsing option '--port' with value 'x': why"
        let (opt, rest) = rest.split_once("' with value '").unwrap_or((rest, ""));
        let (value, why) = rest.split_once("': ").unwrap_or((rest, ""));
        let why = if why.trim() == "duplicate values provided" { "given more than once" } else { why.trim() };
        format!("{opt} `{}`: {why}", shown(value))
    } else if let Some(rest) = text.strip_prefix("Error parsing positional argument '") {
        let (name, rest) = rest.split_once("' with value '").unwrap_or((rest, ""));
        let (value, why) = rest.split_once("': ").unwrap_or((rest, ""));
        format!("{} `{}`: {}", name.to_uppercase(), shown(value), why.trim())
    } else {
        shown(&text.replace('\n', "; ")).into_owned()
    };
    xfer::say!("{prefix}: {why} (see '{help}')");
    exit::USAGE
}

/// An argument as the user typed it, for an error message: decoded, then made printable.
fn shown(escaped: &str) -> std::borrow::Cow<'static, str> {
    std::borrow::Cow::Owned(printable(&unescape_arg(escaped).to_string_lossy()).into_owned())
}

/// Escaped bytes are carried as private-use characters U+10FF00 + byte. Characters of
/// that block typed by the user are escaped too (byte by byte), so the mapping is lossless.
const ESCAPE_BASE: u32 = 0x10_FF00;

fn escaped_byte(b: u8) -> char {
    char::from_u32(ESCAPE_BASE + b as u32).unwrap_or('\u{FFFD}')
}

/// Makes any argument a `&str` that argh passes through untouched: invalid UTF-8 bytes are
/// escaped, and so is the `-` of a lone `-` (argh would take it for an option).
fn escape_arg(arg: &OsStr) -> String {
    let bytes = arg.as_bytes();
    if bytes == b"-" {
        return escaped_byte(b'-').to_string();
    }
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if (c as u32) >= ESCAPE_BASE {
                let mut buf = [0u8; 4];
                out.extend(c.encode_utf8(&mut buf).bytes().map(escaped_byte));
            } else {
                out.push(c);
            }
        }
        out.extend(chunk.invalid().iter().map(|&b| escaped_byte(b)));
    }
    out
}

/// The exact bytes of an argument escaped by [`escape_arg`].
fn unescape_arg(s: &str) -> OsString {
    let mut out = Vec::with_capacity(s.len());
    for c in s.chars() {
        match (c as u32).checked_sub(ESCAPE_BASE) {
            Some(b) if b <= 0xFF => out.push(b as u8),
            _ => out.extend_from_slice(c.encode_utf8(&mut [0u8; 4]).as_bytes()),
        }
    }
    OsString::from_vec(out)
}

fn os_arg(s: &str) -> Result<OsString, String> {
    Ok(unescape_arg(s))
}

fn path_arg(s: &str) -> Result<PathBuf, String> {
    Ok(PathBuf::from(unescape_arg(s)))
}

/// An argument that must be text (addresses, CIDR blocks).
fn text_arg(s: &str) -> Result<String, String> {
    unescape_arg(s).into_string().map_err(|_| "not valid UTF-8".to_string())
}

fn expect_arg(s: &str) -> Result<xfer::fetch::verify::Expect, String> {
    s.parse()
}

fn retry_arg(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(n) if n <= 1000 => Ok(n),
        _ => Err("expected a whole number from 0 to 1000".to_string()),
    }
}

fn port_arg(s: &str) -> Result<u16, String> {
    s.parse().map_err(|_| "expected a port number from 0 to 65535".to_string())
}

/// Largest count accepted for limits: more than any machine has descriptors.
const MAX_COUNT: usize = 1 << 24;

fn count_arg(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=MAX_COUNT).contains(&n) => Ok(n),
        _ => Err(format!("expected a whole number from 1 to {MAX_COUNT}")),
    }
}

fn threads_arg(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=256).contains(&n) => Ok(n),
        _ => Err("expected a whole number from 1 to 256".to_string()),
    }
}

/// `--max-age`: a year at most, as RFC 9111 advises for freshness.
fn max_age_arg(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(n) if n <= 31_536_000 => Ok(n),
        _ => Err("expected a whole number of seconds from 0 to 31536000 (a year)".to_string()),
    }
}

/// Longest duration accepted, in seconds: about 31 years, far past any real deadline.
const MAX_SECS: f64 = 1e9;

fn secs(v: f64) -> Duration {
    Duration::from_secs_f64(v)
}

fn secs_arg(s: &str) -> Result<Duration, String> {
    let v: f64 = s.trim().parse().map_err(|_| "expected a number of seconds, e.g. 30 or 0.5".to_string())?;
    if !v.is_finite() || v <= 0.0 {
        return Err("must be more than 0 seconds".to_string());
    }
    if v > MAX_SECS {
        return Err("must be at most 1e9 seconds".to_string());
    }
    let d = Duration::from_secs_f64(v);
    if d.is_zero() {
        return Err("must be at least 1 nanosecond (0.000000001)".to_string());
    }
    Ok(d)
}

/// The token, from `--token-file`, `--token` (with a warning: `ps` shows it) or XFER_TOKEN;
/// an empty value means none. `serve` may ask for a fresh one (`--token generate`), which
/// is then printed once, by the caller. Errors are usage errors, already said.
fn token(
    cmd: &str,
    flag: Option<OsString>,
    file: Option<&PathBuf>,
    may_generate: bool,
) -> Result<(Option<Vec<u8>>, bool), i32> {
    let from_flag = match (flag, file) {
        (Some(_), Some(_)) => {
            xfer::say!("xfer: {cmd}: give the token once: --token or --token-file (see 'xfer {cmd} --help')");
            return Err(exit::USAGE);
        }
        (None, Some(path)) => return read_token_file(cmd, path).map(|t| (Some(t), false)),
        (Some(t), None) if may_generate && t == "generate" => {
            let mut raw = [0u8; 32];
            if let Err(e) = getrandom::fill(&mut raw) {
                xfer::say!("xfer: {cmd}: cannot generate a token: {e}");
                return Err(exit::INTERNAL);
            }
            let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
            return Ok((Some(hex.into_bytes()), true));
        }
        (Some(t), None) => {
            if !t.is_empty() {
                xfer::say!(
                    "xfer: {cmd}: warning: a token given with --token is visible to other users (ps); \
                     use --token-file or XFER_TOKEN"
                );
            }
            Some(t)
        }
        (None, None) => None,
    };
    let token = from_flag.or_else(|| std::env::var_os("XFER_TOKEN")).map(OsString::into_vec).filter(|t| !t.is_empty());
    Ok((token, false))
}

/// The first line of a token file, without its line ending. The file is never printed.
fn read_token_file(cmd: &str, path: &PathBuf) -> Result<Vec<u8>, i32> {
    use std::os::unix::fs::PermissionsExt;
    let shown = xfer::encoding::text::path(path);
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            xfer::say!("xfer: {cmd}: --token-file {shown}: {e}");
            return Err(exit::LOCAL_IO);
        }
    };
    let line = bytes.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.is_empty() {
        xfer::say!("xfer: {cmd}: --token-file {shown}: the first line is empty");
        return Err(exit::USAGE);
    }
    if std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0) {
        xfer::say!("xfer: {cmd}: warning: {shown} can be read by other users; chmod 600 it");
    }
    Ok(line.to_vec())
}

fn serve(a: ServeArgs) -> i32 {
    let (token, generated_token) = match token("serve", a.token, a.token_file.as_ref(), true) {
        Ok(t) => t,
        Err(code) => return code,
    };
    if a.link_ttl.is_some() && token.is_none() {
        xfer::say!("xfer: serve: --link-ttl signs links with the token: give one too (see 'xfer serve --help')");
        return exit::USAGE;
    }
    let mut allow = Vec::new();
    for c in &a.allow {
        match c.parse() {
            Ok(c) => allow.push(c),
            Err(e) => {
                xfer::say!("xfer: serve: --allow {e} (see 'xfer serve --help')");
                return exit::USAGE;
            }
        }
    }
    let opts = xfer::serve::Options {
        file: a.file,
        listen: a.listen,
        port: a.port,
        quiet: a.quiet,
        max_clients: a.max_clients,
        max_per_ip: a.max_per_ip,
        allow,
        token,
        generated_token,
        token_file: a.token_file,
        link_ttl: a.link_ttl,
        request_timeout: a.request_timeout,
        send_timeout: a.send_timeout,
        drain_timeout: a.drain_timeout,
        threads: a.threads,
        max_age: a.max_age,
    };
    match xfer::serve::run(&opts) {
        Ok(xfer::reactor::Exit::Drained) => exit::OK,
        Ok(xfer::reactor::Exit::Interrupted) => exit::INTERRUPTED,
        Err(e) => {
            xfer::say!("xfer: serve: {e}");
            e.exit_code()
        }
    }
}

fn fetch(a: FetchArgs) -> i32 {
    let token = match token("fetch", a.token, a.token_file.as_ref(), false) {
        Ok((t, _)) => t,
        Err(code) => return code,
    };
    let opts = xfer::fetch::Options {
        target: a.host,
        port: a.port,
        output: a.output,
        timeout: a.timeout,
        token,
        quiet: a.quiet,
        resume: !a.no_resume,
        retry: a.retry,
        retry_for: a.retry_for,
        expect: a.expect,
    };
    match xfer::fetch::run(&opts) {
        Ok(_) => exit::OK,
        Err(xfer::fetch::FetchError::StdoutClosed) => exit::OK,
        Err(e) => {
            xfer::say!("xfer: fetch: {e}");
            e.exit_code()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_is_lossless() {
        let cases: Vec<Vec<u8>> = vec![
            b"-".to_vec(),
            b"--".to_vec(),
            b"plain".to_vec(),
            b"caf\xc3\xa9".to_vec(),
            b"bad\xff\xfe".to_vec(),
            "\u{10FF2D}".as_bytes().to_vec(),
            "\u{10FFFF}x\u{10FF00}".as_bytes().to_vec(),
            b"\xf4\x8f\xbc".to_vec(),
        ];
        for c in cases {
            let os = OsString::from_vec(c.clone());
            let e = escape_arg(&os);
            assert!(e != "-" && !(e.starts_with('-') && c.first() != Some(&b'-')), "{e:?}");
            assert_eq!(unescape_arg(&e).into_vec(), c);
        }
    }

    #[test]
    fn durations() {
        assert_eq!(secs_arg("0.25"), Ok(Duration::from_millis(250)));
        assert!(secs_arg("1e-10").unwrap_err().contains("nanosecond"));
        assert!(secs_arg("0").is_err());
        assert!(secs_arg("-1").is_err());
        assert!(secs_arg("nan").is_err());
        assert!(secs_arg("inf").is_err());
        assert!(secs_arg("2e9").unwrap_err().contains("1e9"));
    }
}
