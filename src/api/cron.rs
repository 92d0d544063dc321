//! Cron schedules in the grammar of Go's `robfig/cron/v3` standard parser, which upstream's
//! AdvancedCronJob uses: an optional `TZ=`/`CRON_TZ=` zone prefix, `@` descriptors including
//! `@every <duration>`, or exactly five fields (minute, hour, day of month, month, day of week).
//! Error messages follow the Go parser's, so users see what they would upstream.

use std::time::Duration;

use jiff::tz::TimeZone;

/// A parsed schedule.
#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    /// Fires at previous run + interval (whole seconds, at least one), whatever the zone.
    Every(Duration),
    Cron(CronFields),
}

/// The five fields as bit sets (bit n set: value n allowed), with the zone the schedule names.
#[derive(Debug, Clone, PartialEq)]
pub struct CronFields {
    pub zone: Option<String>,
    pub minute: u64,
    pub hour: u64,
    pub day_of_month: u64,
    pub month: u64,
    pub day_of_week: u64,
    /// Day-of-month written as a bare star (`*`, `?`, `*/1`): then both day fields must match,
    /// otherwise either may (classic cron).
    pub day_of_month_star: bool,
    pub day_of_week_star: bool,
}

impl CronFields {
    /// Whether a wall-clock time (in the schedule's zone) is a firing time, to the minute.
    pub fn matches(&self, minute: u32, hour: u32, day_of_month: u32, month: u32, day_of_week: u32) -> bool {
        let has = |bits: u64, v: u32| v < 64 && bits & (1 << v) != 0;
        let dom = has(self.day_of_month, day_of_month);
        let dow = has(self.day_of_week, day_of_week);
        let day = if self.day_of_month_star || self.day_of_week_star { dom && dow } else { dom || dow };
        has(self.minute, minute) && has(self.hour, hour) && has(self.month, month) && day
    }
}

struct Bounds {
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const MINUTES: Bounds = Bounds { min: 0, max: 59, names: &[] };
const HOURS: Bounds = Bounds { min: 0, max: 23, names: &[] };
const DAYS_OF_MONTH: Bounds = Bounds { min: 1, max: 31, names: &[] };
const MONTHS: Bounds = Bounds {
    min: 1,
    max: 12,
    names: &["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"],
};
const DAYS_OF_WEEK: Bounds = Bounds { min: 0, max: 6, names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"] };

/// Loads an IANA zone from the database compiled into the binary.
pub fn load_zone(name: &str) -> Result<TimeZone, String> {
    TimeZone::get(name).map_err(|e| format!("unknown time zone {name}: {e}"))
}

/// Parses `spec` as the AdvancedCronJob controller will read it.
pub fn parse_schedule(spec: &str) -> Result<Schedule, String> {
    if spec.is_empty() {
        return Err("empty spec string".into());
    }
    let mut rest = spec;
    let mut zone = None;
    if rest.starts_with("TZ=") || rest.starts_with("CRON_TZ=") {
        // Upstream 1.3 panics when no space follows the zone; a clean error here.
        let space = rest
            .find(' ')
            .ok_or_else(|| format!("provided bad location in {spec}: missing the schedule after the zone"))?;
        let eq = rest.find('=').unwrap_or(0);
        let name = &rest[eq + 1..space];
        load_zone(name).map_err(|e| format!("provided bad location {name}: {e}"))?;
        zone = Some(name.to_string());
        rest = rest[space..].trim();
    }
    if rest.starts_with('@') {
        return parse_descriptor(rest, zone);
    }
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(format!("expected exactly 5 fields, found {}: [{}]", fields.len(), fields.join(" ")));
    }
    let (day_of_month, day_of_month_star) = field(fields[2], &DAYS_OF_MONTH)?;
    let (day_of_week, day_of_week_star) = field(fields[4], &DAYS_OF_WEEK)?;
    Ok(Schedule::Cron(CronFields {
        zone,
        minute: field(fields[0], &MINUTES)?.0,
        hour: field(fields[1], &HOURS)?.0,
        day_of_month,
        month: field(fields[3], &MONTHS)?.0,
        day_of_week,
        day_of_month_star,
        day_of_week_star,
    }))
}

fn all(b: &Bounds) -> u64 {
    (b.min..=b.max).fold(0, |bits, v| bits | 1 << v)
}

fn parse_descriptor(d: &str, zone: Option<String>) -> Result<Schedule, String> {
    let cron = |minute: u64, hour: u64, dom: u64, month: u64, dow: u64, dom_star: bool, dow_star: bool| {
        Schedule::Cron(CronFields {
            zone: zone.clone(),
            minute,
            hour,
            day_of_month: dom,
            month,
            day_of_week: dow,
            day_of_month_star: dom_star,
            day_of_week_star: dow_star,
        })
    };
    let (h, dom, mon, dow) = (all(&HOURS), all(&DAYS_OF_MONTH), all(&MONTHS), all(&DAYS_OF_WEEK));
    Ok(match d {
        "@yearly" | "@annually" => cron(1, 1, 1 << 1, 1 << 1, dow, false, true),
        "@monthly" => cron(1, 1, 1 << 1, mon, dow, false, true),
        "@weekly" => cron(1, 1, dom, mon, 1, true, false),
        "@daily" | "@midnight" => cron(1, 1, dom, mon, dow, true, true),
        "@hourly" => cron(1, h, dom, mon, dow, true, true),
        _ => match d.strip_prefix("@every ") {
            Some(text) => {
                let every = crate::runtime::flag_values::parse_duration(text.trim())
                    .map_err(|e| format!("failed to parse duration {d}: {e}"))?;
                // Sub-second parts are dropped; under a second counts as one.
                Schedule::Every(Duration::from_secs(every.as_secs().max(1)))
            }
            None => return Err(format!("unrecognized descriptor: {d}")),
        },
    })
}

fn parse_int(s: &str) -> Result<u32, String> {
    let n: i64 =
        s.parse().map_err(|_| format!("failed to parse int from {s}: strconv.Atoi: parsing {s:?}: invalid syntax"))?;
    if n < 0 {
        return Err(format!("negative number ({n}) not allowed: {s}"));
    }
    u32::try_from(n).map_err(|_| format!("failed to parse int from {s}: value out of range"))
}

fn int_or_name(s: &str, b: &Bounds) -> Result<u32, String> {
    let lower = s.to_lowercase();
    if let Some(i) = b.names.iter().position(|n| *n == lower) {
        return Ok(b.min + i as u32);
    }
    parse_int(s)
}

/// One field: a comma list of ranges. Returns the bits and whether it was a bare star.
fn field(f: &str, b: &Bounds) -> Result<(u64, bool), String> {
    let mut bits = 0;
    let mut star = false;
    for expr in f.split(',') {
        let (r, is_star) = range(expr, b)?;
        bits |= r;
        star |= is_star;
    }
    Ok((bits, star))
}

fn range(expr: &str, b: &Bounds) -> Result<(u64, bool), String> {
    let range_and_step: Vec<&str> = expr.split('/').collect();
    let low_and_high: Vec<&str> = range_and_step[0].split('-').collect();
    let single = low_and_high.len() == 1;
    let (start, mut end, mut star) = if low_and_high[0] == "*" || low_and_high[0] == "?" {
        (b.min, b.max, true)
    } else {
        let start = int_or_name(low_and_high[0], b)?;
        let end = match low_and_high.len() {
            1 => start,
            2 => int_or_name(low_and_high[1], b)?,
            _ => return Err(format!("too many hyphens: {expr}")),
        };
        (start, end, false)
    };
    let step = match range_and_step.len() {
        1 => 1,
        2 => {
            let step = parse_int(range_and_step[1])?;
            if single {
                end = b.max;
            }
            if step > 1 {
                star = false;
            }
            step
        }
        _ => return Err(format!("too many slashes: {expr}")),
    };
    if start < b.min {
        return Err(format!("beginning of range ({start}) below minimum ({}): {expr}", b.min));
    }
    if end > b.max {
        return Err(format!("end of range ({end}) above maximum ({}): {expr}", b.max));
    }
    if start > end {
        return Err(format!("beginning of range ({start}) beyond end of range ({end}): {expr}"));
    }
    if step == 0 {
        return Err(format!("step of range should be a positive number: {expr}"));
    }
    let bits = (start..=end).step_by(step as usize).fold(0u64, |bits, v| bits | 1 << v);
    Ok((bits, star))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cron(s: &str) -> CronFields {
        match parse_schedule(s) {
            Ok(Schedule::Cron(c)) => c,
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn fields_and_ranges() {
        let c = cron("30 2 * * *");
        assert!(c.matches(30, 2, 17, 6, 3));
        assert!(!c.matches(31, 2, 17, 6, 3));
        let c = cron("*/15 9-17 * jan-mar mon-fri");
        assert!(c.matches(45, 17, 1, 3, 5));
        assert!(!c.matches(45, 18, 1, 3, 5));
        assert!(!c.matches(45, 9, 1, 4, 5));
        assert!(!c.matches(45, 9, 1, 3, 0), "sunday");
        let c = cron("5/20 * * * *");
        assert_eq!(c.minute, 1 << 5 | 1 << 25 | 1 << 45, "N/step runs to the field maximum");
        assert_eq!(cron("0 0 1,15 * ?").day_of_month, 1 << 1 | 1 << 15);
        assert_eq!(cron("0 0 * * SUN").day_of_week, 1, "names are case-insensitive");
    }

    #[test]
    fn day_matching_follows_the_star_rule() {
        // Both restricted: either day may match.
        let c = cron("0 0 13 * 5");
        assert!(c.matches(0, 0, 13, 1, 2));
        assert!(c.matches(0, 0, 7, 1, 5));
        // Day of week a bare star (also */1): both must match, so any 13th.
        let c = cron("0 0 13 * */1");
        assert!(c.day_of_week_star);
        assert!(c.matches(0, 0, 13, 1, 2));
        assert!(!c.matches(0, 0, 7, 1, 5));
        assert!(!cron("0 0 13 * */2").day_of_week_star, "a step above 1 is no star");
    }

    #[test]
    fn descriptors_and_zones() {
        assert_eq!(parse_schedule("@every 1h30m"), Ok(Schedule::Every(Duration::from_secs(5400))));
        assert_eq!(parse_schedule("@every 100ms"), Ok(Schedule::Every(Duration::from_secs(1))));
        assert_eq!(cron("@hourly").minute, 1);
        assert_eq!(cron("@weekly").day_of_week, 1);
        assert_eq!(cron("@yearly").month, 1 << 1);
        let c = cron("TZ=Asia/Shanghai 30 2 * * *");
        assert_eq!(c.zone.as_deref(), Some("Asia/Shanghai"));
        assert_eq!(cron("CRON_TZ=UTC @daily").zone.as_deref(), Some("UTC"));
    }

    #[test]
    fn errors_as_the_go_parser_gives_them() {
        let err = |s: &str| parse_schedule(s).unwrap_err();
        assert_eq!(err(""), "empty spec string");
        assert_eq!(err("* * * * * *"), "expected exactly 5 fields, found 6: [* * * * * *]");
        assert_eq!(err("@reboot"), "unrecognized descriptor: @reboot");
        assert_eq!(err("60 * * * *"), "end of range (60) above maximum (59): 60");
        assert_eq!(err("* * 0 * *"), "beginning of range (0) below minimum (1): 0");
        assert_eq!(err("* * * * 7"), "end of range (7) above maximum (6): 7");
        assert_eq!(err("5-1 * * * *"), "beginning of range (5) beyond end of range (1): 5-1");
        assert_eq!(err("*/0 * * * *"), "step of range should be a positive number: */0");
        assert_eq!(err("1-2-3 * * * *"), "too many hyphens: 1-2-3");
        assert!(err("L * * * *").starts_with("failed to parse int from L"));
        assert!(err("TZ=Mars/Olympus 0 0 * * *").starts_with("provided bad location Mars/Olympus"));
        assert!(err("TZ=UTC").starts_with("provided bad location"), "no panic without a space");
        assert!(err("@every forever").starts_with("failed to parse duration"));
    }

    #[test]
    fn zones_come_from_the_embedded_database() {
        assert!(load_zone("Asia/Shanghai").is_ok());
        assert!(load_zone("America/Argentina/Buenos_Aires").is_ok());
        assert!(load_zone("Nowhere/Special").is_err());
    }
}
