//! Measurements and the table they are printed in.

use serde::Serialize;

/// Repeated measurements of one quantity.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub runs: usize,
}

impl Sample {
    /// Summarizes `values` (at least one).
    pub fn of(values: &[f64]) -> Sample {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if !n.is_multiple_of(2) {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Sample {
            median,
            min: sorted[0],
            max: sorted[n - 1],
            runs: n,
        }
    }

    /// The value at quantile `q` (nearest rank).
    pub fn quantile(values: &[f64], q: f64) -> f64 {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1]
    }

    /// An approximate 95% interval for the median of `values`, free of any
    /// assumption about their distribution: the order statistics n/2 ±
    /// 0.98·√n, rounded (the binomial's normal approximation).
    pub fn median_interval(values: &[f64]) -> (f64, f64) {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len() as f64;
        let half_width = 0.98 * n.sqrt();
        let lower = ((n / 2.0 - half_width).round() as usize).clamp(1, sorted.len());
        let upper = ((n / 2.0 + 1.0 + half_width).round() as usize).clamp(1, sorted.len());
        (sorted[lower - 1], sorted[upper - 1])
    }
}

/// One line of the result table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub scenario: String,
    pub size: String,
    pub value: Sample,
    pub unit: String,
    /// What the ratio compares with, e.g. "broker ceiling 30,100 msg/s ÷ 2".
    pub reference: Option<String>,
    /// `value.median / reference value`.
    pub ratio: Option<f64>,
    /// A target from the issue, e.g. ">= 10000", and whether it is met.
    pub target: Option<String>,
    pub met: Option<bool>,
    /// Free text for the reference column when there is no ratio, e.g.
    /// where the time went.
    pub note: Option<String>,
}

impl Row {
    pub fn new(scenario: &str, size: &str, value: Sample, unit: &str) -> Row {
        Row {
            scenario: scenario.to_owned(),
            size: size.to_owned(),
            value,
            unit: unit.to_owned(),
            reference: None,
            ratio: None,
            target: None,
            met: None,
            note: None,
        }
    }

    pub fn note(mut self, note: String) -> Row {
        self.note = Some(note);
        self
    }

    pub fn against(mut self, reference: String, reference_value: f64) -> Row {
        self.ratio = Some(self.value.median / reference_value);
        self.reference = Some(reference);
        self
    }

    pub fn target(mut self, target: &str, met: bool) -> Row {
        self.target = Some(target.to_owned());
        self.met = Some(met);
        self
    }
}

/// A number with thousands separators and sensible precision.
pub fn human(value: f64) -> String {
    if value.abs() >= 100.0 {
        let rounded = value.round() as i64;
        let digits = rounded.abs().to_string();
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        if rounded < 0 { format!("-{out}") } else { out }
    } else if value.abs() >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// The table as Markdown, ready for docs/BENCHMARKS.md.
pub fn markdown(rows: &[Row]) -> String {
    let mut out = String::from(
        "| scenario | size | median | range | unit | vs reference | target |\n| --- | --- | ---: | --- | --- | --- | --- |\n",
    );
    for row in rows {
        let range = if row.value.runs > 1 {
            format!(
                "{}–{} ({} runs)",
                human(row.value.min),
                human(row.value.max),
                row.value.runs
            )
        } else {
            "1 run".to_owned()
        };
        let reference = match (&row.reference, row.ratio) {
            (Some(reference), Some(ratio)) => format!("{:.0}% of {reference}", ratio * 100.0),
            _ => row.note.clone().unwrap_or_default(),
        };
        let target = match (&row.target, row.met) {
            (Some(target), Some(met)) => format!("{target} {}", if met { "✓" } else { "✗" }),
            _ => String::new(),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            row.scenario,
            row.size,
            human(row.value.median),
            range,
            row.unit,
            reference,
            target
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_quantiles_and_numbers() {
        let sample = Sample::of(&[3.0, 1.0, 2.0, 10.0]);
        assert_eq!(sample.median, 2.5);
        assert_eq!((sample.min, sample.max), (1.0, 10.0));
        assert_eq!(
            Sample::quantile(&(1..=100).map(f64::from).collect::<Vec<_>>(), 0.99),
            99.0
        );
        assert_eq!(human(12345.6), "12,346");
        assert_eq!(human(42.123), "42.1");
        assert_eq!(human(0.5), "0.50");
    }

    #[test]
    fn the_median_interval_of_thirty_values_spans_ranks_ten_to_twenty_one() {
        let values: Vec<f64> = (1..=30).rev().map(f64::from).collect();
        assert_eq!(Sample::median_interval(&values), (10.0, 21.0));
        assert_eq!(Sample::median_interval(&[7.0]), (7.0, 7.0));
    }
}
