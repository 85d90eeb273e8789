//! What a collector's answer means, as the OTLP specification says (`Failures` and `Throttling`
//! in opentelemetry-proto's `docs/specification.md`): accepted (perhaps with some records
//! rejected: `partial_success`), worth another try (after the delay the collector asked for),
//! or refused for good.
//!
//! The answers are small protobuf messages; they are read with a few lines of wire-format
//! parsing rather than generated types, like the requests are written (`encoder.rs`).
use std::time::{Duration, SystemTime};

/// The longest wait a collector may ask for (gRPC `RetryInfo`, HTTP `Retry-After`): a longer
/// one is cut to this, so a wrong or hostile answer cannot park an export for hours.
pub const MAX_SERVER_DELAY: Duration = Duration::from_secs(30);
/// The longest collector message quoted in ksense's log.
const MAX_MESSAGE: usize = 200;

/// What became of one export attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The collector took the request; `rejected` of its records it refused nonetheless
    /// (`partial_success`), saying `message` (empty when it said nothing).
    Accepted {
        /// `partial_success.rejected_log_records`.
        rejected: u64,
        /// `partial_success.error_message`, one line, bounded.
        message: String,
    },
    /// Not taken this time, and worth another try: after `after` when the collector said
    /// when, else after the exporter's backoff.
    Retry {
        /// Why, e.g. `gRPC UNAVAILABLE: connection refused`.
        cause: String,
        /// The collector's `RetryInfo.retry_delay` or `Retry-After`, at most [`MAX_SERVER_DELAY`].
        after: Option<Duration>,
    },
    /// Refused for good: sending it again would not help.
    Refused {
        /// The kind of refusal, e.g. `gRPC INVALID_ARGUMENT` or `HTTP 400`: what the log names
        /// once.
        cause: String,
        /// What the collector said, one line, bounded.
        detail: String,
    },
}

/// The outcome of a gRPC answer: `Ok` with the `ExportLogsServiceResponse` message, or the
/// status (its code, message and `grpc-status-details-bin`).
pub fn grpc(answer: Result<&[u8], &tonic::Status>) -> Outcome {
    let status = match answer {
        Ok(message) => return accepted(message),
        Err(status) => status,
    };
    use tonic::Code;
    let code = status.code();
    let cause = format!("gRPC {}", code_name(code));
    let detail = bounded_line(status.message());
    // A status with an error behind it is tonic's account of a failed connection or stream
    // (reset, broken, timed out), not the collector's answer: a transport error, retryable.
    if std::error::Error::source(status).is_some() {
        return Outcome::Retry { cause: format!("{cause} (transport): {detail}"), after: None };
    }
    match code {
        // The specification's retryable codes; RESOURCE_EXHAUSTED only when the server says
        // it can recover (RetryInfo), since a request over its size limit never will.
        Code::Cancelled | Code::DeadlineExceeded | Code::Aborted | Code::OutOfRange | Code::Unavailable | Code::DataLoss => {
            Outcome::Retry { cause: format!("{cause}: {detail}"), after: retry_delay(status.details()) }
        }
        Code::ResourceExhausted => match retry_delay(status.details()) {
            Some(after) => Outcome::Retry { cause: format!("{cause}: {detail}"), after: Some(after) },
            None => Outcome::Refused { cause, detail },
        },
        _ => Outcome::Refused { cause, detail },
    }
}

/// The outcome of an HTTP answer: its status, its `Retry-After` header and its body (an
/// `ExportLogsServiceResponse` on success, a `google.rpc.Status` or text otherwise). `now` is
/// the clock a `Retry-After` date is measured against.
pub fn http(status: http::StatusCode, retry_after: Option<&str>, body: &[u8], now: SystemTime) -> Outcome {
    if status.is_success() {
        return accepted(body);
    }
    let detail = match status_message(body) {
        Some(message) => bounded_line(&message),
        None => bounded_line(&String::from_utf8_lossy(body)),
    };
    let cause = format!("HTTP {}", status.as_u16());
    match status.as_u16() {
        429 | 502 | 503 | 504 => Outcome::Retry {
            cause: format!("{cause}: {detail}"),
            after: retry_after.and_then(|value| parse_retry_after(value, now)),
        },
        _ => Outcome::Refused { cause, detail },
    }
}

/// `Retry-After`: delay-seconds or an HTTP date (RFC 9110 section 10.2.3), at most
/// [`MAX_SERVER_DELAY`]; `None` when it is neither.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let delay = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => http_date(value)?.duration_since(now).unwrap_or(Duration::ZERO),
    };
    Some(delay.min(MAX_SERVER_DELAY))
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the form HTTP servers send.
fn http_date(value: &str) -> Option<SystemTime> {
    let [_weekday, day, month, year, time, "GMT"] = value.split_ascii_whitespace().collect::<Vec<_>>()[..] else {
        return None;
    };
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let month = MONTHS.iter().position(|m| *m == month)? as i64 + 1;
    let (day, year): (i64, i64) = (day.parse().ok()?, year.parse().ok()?);
    let [h, m, s] = time.split(':').map(|n| n.parse::<i64>().ok()).collect::<Option<Vec<_>>>()?[..] else {
        return None;
    };
    if !(1..=31).contains(&day) || !(0..24).contains(&h) || !(0..60).contains(&m) || !(0..=60).contains(&s) {
        return None;
    }
    // Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let seconds = u64::try_from(days * 86_400 + h * 3600 + m * 60 + s).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(seconds))
}

/// An accepted request's `ExportLogsServiceResponse`: its `partial_success`, if any.
fn accepted(response: &[u8]) -> Outcome {
    let (mut rejected, mut message) = (0, String::new());
    for (field, value) in Fields(response) {
        // ExportLogsServiceResponse.partial_success
        if let (1, Wire::Bytes(partial)) = (field, value) {
            for (field, value) in Fields(partial) {
                match (field, value) {
                    // rejected_log_records (int64; a negative count means nothing)
                    (1, Wire::Varint(n)) => rejected = i64::try_from(n).map_or(0, |n| n.max(0) as u64),
                    // error_message
                    (2, Wire::Bytes(text)) => message = bounded_line(&String::from_utf8_lossy(text)),
                    _ => {}
                }
            }
        }
    }
    Outcome::Accepted { rejected, message }
}

/// `google.rpc.RetryInfo.retry_delay` among the details of a `google.rpc.Status`, at most
/// [`MAX_SERVER_DELAY`].
fn retry_delay(status: &[u8]) -> Option<Duration> {
    const RETRY_INFO: &[u8] = b"type.googleapis.com/google.rpc.RetryInfo";
    for (field, value) in Fields(status) {
        // Status.details: google.protobuf.Any
        let (3, Wire::Bytes(any)) = (field, value) else { continue };
        let mut type_url = &[][..];
        let mut info = None;
        for (field, value) in Fields(any) {
            match (field, value) {
                (1, Wire::Bytes(url)) => type_url = url,
                (2, Wire::Bytes(bytes)) => info = Some(bytes),
                _ => {}
            }
        }
        if type_url != RETRY_INFO {
            continue;
        }
        let (mut seconds, mut nanos) = (0u64, 0u64);
        for (field, value) in Fields(info?) {
            // RetryInfo.retry_delay: google.protobuf.Duration
            let (1, Wire::Bytes(duration)) = (field, value) else { continue };
            for (field, value) in Fields(duration) {
                match (field, value) {
                    (1, Wire::Varint(s)) => seconds = i64::try_from(s).map_or(0, |s| s.max(0) as u64),
                    (2, Wire::Varint(n)) => nanos = (n as i64).clamp(0, 999_999_999) as u64,
                    _ => {}
                }
            }
        }
        return Some(Duration::new(seconds.min(MAX_SERVER_DELAY.as_secs()), nanos as u32).min(MAX_SERVER_DELAY));
    }
    None
}

/// The `message` of a `google.rpc.Status` body (what OTLP/HTTP collectors answer a refusal
/// with), when the body is one.
fn status_message(body: &[u8]) -> Option<String> {
    Fields(body).find_map(|(field, value)| match (field, value) {
        (2, Wire::Bytes(text)) => std::str::from_utf8(text).ok().map(str::to_owned),
        _ => None,
    })
}

/// `text` on one line (control characters escaped), cut to a bounded length.
pub fn bounded_line(text: &str) -> String {
    let mut line = crate::text::one_line(text.trim());
    if line.len() > MAX_MESSAGE {
        line.truncate(line.floor_char_boundary(MAX_MESSAGE));
        line.push_str("...");
    }
    line
}

/// The specification's name of a gRPC status code, e.g. `INVALID_ARGUMENT`.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// A protobuf field's value, as far as these answers need it.
enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

/// The fields of a protobuf message, in order; stops at the first malformed byte.
struct Fields<'a>(&'a [u8]);

impl<'a> Iterator for Fields<'a> {
    type Item = (u64, Wire<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        let key = self.varint()?;
        let value = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => self.skip(8)?,
            2 => {
                let len = usize::try_from(self.varint()?).ok()?;
                let bytes = self.0.get(..len)?;
                self.0 = &self.0[len..];
                Wire::Bytes(bytes)
            }
            5 => self.skip(4)?,
            _ => {
                self.0 = &[];
                return None;
            }
        };
        Some((key >> 3, value))
    }
}

impl<'a> Fields<'a> {
    fn varint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for (i, &byte) in self.0.iter().enumerate().take(10) {
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                self.0 = &self.0[i + 1..];
                return Some(value);
            }
        }
        self.0 = &[];
        None
    }

    fn skip(&mut self, n: usize) -> Option<Wire<'a>> {
        self.0 = self.0.get(n..)?;
        Some(Wire::Fixed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::logs::v1::{ExportLogsPartialSuccess, ExportLogsServiceResponse};
    use prost::Message as _;

    /// A `google.rpc.Status` with one `RetryInfo` detail of `seconds` and `nanos`.
    fn status_with_retry_info(seconds: i64, nanos: i32) -> Vec<u8> {
        let message = |fields: &[(u32, &[u8])]| {
            let mut out = Vec::new();
            for (field, bytes) in fields {
                prost::encoding::bytes::encode(*field, &bytes.to_vec(), &mut out);
            }
            out
        };
        let mut duration = Vec::new();
        prost::encoding::int64::encode(1, &seconds, &mut duration);
        prost::encoding::int32::encode(2, &nanos, &mut duration);
        let retry_info = message(&[(1, &duration)]);
        let any = message(&[(1, b"type.googleapis.com/google.rpc.RetryInfo"), (2, &retry_info)]);
        let mut status = Vec::new();
        prost::encoding::int32::encode(1, &8, &mut status);
        prost::encoding::string::encode(2, &"slow down".to_owned(), &mut status);
        status.extend(message(&[(3, &any)]));
        status
    }

    fn grpc_status(code: tonic::Code, details: Vec<u8>) -> Outcome {
        grpc(Err(&tonic::Status::with_details(code, "no\nway", details.into())))
    }

    #[test]
    fn grpc_codes_are_retried_as_the_specification_says() {
        use tonic::Code::*;
        for code in [Cancelled, DeadlineExceeded, Aborted, OutOfRange, Unavailable, DataLoss] {
            assert!(matches!(grpc_status(code, Vec::new()), Outcome::Retry { after: None, .. }), "{code:?}");
        }
        for code in [Unknown, InvalidArgument, NotFound, AlreadyExists, PermissionDenied, FailedPrecondition, Unimplemented, Internal, Unauthenticated] {
            let outcome = grpc_status(code, Vec::new());
            let Outcome::Refused { cause, detail } = outcome else { panic!("{code:?} retried") };
            assert!(cause.starts_with("gRPC "), "{cause}");
            assert_eq!(detail, "no\\nway", "one line");
        }
        let Outcome::Refused { cause, .. } = grpc_status(InvalidArgument, Vec::new()) else { unreachable!() };
        assert_eq!(cause, "gRPC INVALID_ARGUMENT");
    }

    #[test]
    fn transport_errors_are_retried_whatever_code_tonic_gives_them() {
        let reset = tonic::Status::from_error(Box::new(std::io::Error::other("connection reset mid-stream")));
        assert_eq!(reset.code(), tonic::Code::Unknown);
        assert!(matches!(grpc(Err(&reset)), Outcome::Retry { after: None, .. }));
    }

    #[test]
    fn resource_exhausted_is_retried_only_with_retry_info_and_its_delay_is_bounded() {
        use tonic::Code::ResourceExhausted;
        assert!(matches!(grpc_status(ResourceExhausted, Vec::new()), Outcome::Refused { .. }));
        let outcome = grpc_status(ResourceExhausted, status_with_retry_info(2, 500_000_000));
        assert_eq!(outcome, Outcome::Retry { cause: "gRPC RESOURCE_EXHAUSTED: no\\nway".into(), after: Some(Duration::from_millis(2500)) });
        let outcome = grpc_status(ResourceExhausted, status_with_retry_info(86_400, 0));
        assert!(matches!(outcome, Outcome::Retry { after: Some(MAX_SERVER_DELAY), .. }), "{outcome:?}");
        // RetryInfo on a retryable code is honoured too.
        let outcome = grpc_status(tonic::Code::Unavailable, status_with_retry_info(1, 0));
        assert!(matches!(outcome, Outcome::Retry { after: Some(d), .. } if d == Duration::from_secs(1)), "{outcome:?}");
    }

    #[test]
    fn partial_success_is_read_from_the_response() {
        let response = ExportLogsServiceResponse {
            partial_success: Some(ExportLogsPartialSuccess { rejected_log_records: 3, error_message: "too old\ntimestamps".into() }),
        };
        let bytes = response.encode_to_vec();
        let expected = Outcome::Accepted { rejected: 3, message: "too old\\ntimestamps".into() };
        assert_eq!(grpc(Ok(&bytes)), expected);
        assert_eq!(http(http::StatusCode::OK, None, &bytes, SystemTime::now()), expected);
        assert_eq!(grpc(Ok(&[])), Outcome::Accepted { rejected: 0, message: String::new() });
        // Garbage is not a partial success.
        assert_eq!(grpc(Ok(&[0xff; 7])), Outcome::Accepted { rejected: 0, message: String::new() });
        let long = "x".repeat(10_000);
        let bytes = ExportLogsServiceResponse {
            partial_success: Some(ExportLogsPartialSuccess { rejected_log_records: 1, error_message: long }),
        }
        .encode_to_vec();
        let Outcome::Accepted { message, .. } = grpc(Ok(&bytes)) else { unreachable!() };
        assert!(message.len() <= MAX_MESSAGE + 3, "{}", message.len());
    }

    #[test]
    fn http_statuses_are_retried_as_the_specification_says() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        for code in [429, 502, 503, 504] {
            let status = http::StatusCode::from_u16(code).unwrap();
            assert!(matches!(http(status, None, b"", now), Outcome::Retry { after: None, .. }), "{code}");
            let outcome = http(status, Some("7"), b"", now);
            assert!(matches!(outcome, Outcome::Retry { after: Some(d), .. } if d == Duration::from_secs(7)), "{outcome:?}");
        }
        for code in [400, 401, 403, 404, 413, 500, 501, 505] {
            let status = http::StatusCode::from_u16(code).unwrap();
            let outcome = http(status, Some("1"), b"refused\r\n", now);
            assert_eq!(outcome, Outcome::Refused { cause: format!("HTTP {code}"), detail: "refused".into() });
        }
        // A google.rpc.Status body: its message is the detail.
        let mut body = Vec::new();
        prost::encoding::string::encode(2, &"bad logs".to_owned(), &mut body);
        let outcome = http(http::StatusCode::BAD_REQUEST, None, &body, now);
        assert_eq!(outcome, Outcome::Refused { cause: "HTTP 400".into(), detail: "bad logs".into() });
    }

    #[test]
    fn retry_after_takes_seconds_or_a_date_and_is_bounded() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(parse_retry_after("12", now), Some(Duration::from_secs(12)));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:47 GMT", now), Some(Duration::from_secs(10)));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:00 GMT", now), Some(Duration::ZERO), "in the past");
        assert_eq!(parse_retry_after("Mon, 01 Jan 2124 00:00:00 GMT", now), Some(MAX_SERVER_DELAY));
        assert_eq!(parse_retry_after("999999", now), Some(MAX_SERVER_DELAY));
        for bad in ["", "-1", "soon", "Sun, 06 Nov 1994 25:49:37 GMT", "Sun, 06 Foo 1994 08:49:37 GMT"] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }
}
