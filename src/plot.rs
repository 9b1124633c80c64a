//! Line charts and histograms as PNG files, for reports (layer sweeps, training curves, data
//! screening).
//!
//! Text is drawn with DejaVu Sans compiled into the binary, so charts render the same on any
//! machine without system fonts or fontconfig.

use anyhow::{anyhow, ensure, Result};
use plotters::coord::types::RangedCoordf64;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use std::ops::Range;
use std::path::Path;
use std::sync::Once;

/// One line on a chart.
#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    /// Index into the palette (Tableau 10), so that a reference line can share its series' colour.
    pub color: usize,
    /// Drawn dashed and without markers: reference lines such as a baseline.
    pub dashed: bool,
    /// Drawn as unconnected points (a scatter plot).
    pub scatter: bool,
}

#[derive(Debug, Clone)]
pub struct LineChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// Fixed y range (e.g. 0–100 for judge scores); fitted to the data when `None`.
    pub y_range: Option<Range<f64>>,
    pub series: Vec<Series>,
}

const SIZE: (u32, u32) = (960, 600);
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];
/// Series with more points than this are drawn without markers, which would only clutter them.
const MAX_MARKED_POINTS: usize = 40;

impl LineChart {
    /// Draws the chart to `path` (PNG), atomically.
    pub fn save_png(&self, path: &Path) -> Result<()> {
        crate::atomic::write_to_path(path, |tmp| self.draw_png(tmp, path))
    }

    fn draw_png(&self, file: &Path, path: &Path) -> Result<()> {
        register_font();
        let points = || self.series.iter().flat_map(|s| &s.points);
        ensure!(
            points().next().is_some(),
            "{}: a chart needs at least one point",
            path.display()
        );
        let frame = Frame {
            title: &self.title,
            x_label: &self.x_label,
            y_label: &self.y_label,
            x: padded(points().map(|p| p.0), 0.02),
            y: self
                .y_range
                .clone()
                .unwrap_or_else(|| padded(points().map(|p| p.1), 0.05)),
        };
        frame.draw(file, path, |chart| {
            // A series without points would only add a legend entry for a line that is not there.
            for s in self.series.iter().filter(|s| !s.points.is_empty()) {
                draw_series(chart, s, path)?;
            }
            Ok(())
        })
    }
}

/// One line, dashed line or scatter, and its legend entry.
fn draw_series(chart: &mut Chart<'_>, s: &Series, path: &Path) -> Result<()> {
    let style = PALETTE[s.color % PALETTE.len()].stroke_width(2);
    let drawn = if s.scatter {
        chart.draw_series(s.points.iter().map(|&p| Circle::new(p, 5, style.filled())))
    } else if s.dashed {
        chart.draw_series(DashedLineSeries::new(s.points.iter().copied(), 8, 6, style))
    } else {
        chart.draw_series(LineSeries::new(s.points.iter().copied(), style).point_size(
            if s.points.len() <= MAX_MARKED_POINTS {
                4
            } else {
                0
            },
        ))
    };
    let dashed = s.dashed;
    drawn
        .map_err(|e| draw_error(path, e))?
        .label(&s.label)
        .legend(move |(x, y)| {
            let ends = vec![(x, y), (x + 24, y)];
            if dashed {
                DashedPathElement::new(ends, 6, 4, style).into_dyn()
            } else {
                PathElement::new(ends, style).into_dyn()
            }
        });
    Ok(())
}

/// A chart on a PNG file; the backend borrows the file name for as long as the chart lives.
type Chart<'a> = ChartContext<'a, BitMapBackend<'a>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// What line charts and histograms share: a title, labelled axes with noise-free ticks, and a
/// legend in the upper right.
struct Frame<'a> {
    title: &'a str,
    x_label: &'a str,
    y_label: &'a str,
    x: Range<f64>,
    y: Range<f64>,
}

impl Frame<'_> {
    /// Draws the frame into `file` (PNG), then `contents` on it, then the legend of what
    /// `contents` labelled; errors name `path`.
    fn draw(
        self,
        file: &Path,
        path: &Path,
        contents: impl FnOnce(&mut Chart<'_>) -> Result<()>,
    ) -> Result<()> {
        let root = BitMapBackend::new(file, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| draw_error(path, e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(self.title, ("sans-serif", 24))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(64)
            .build_cartesian_2d(self.x, self.y)
            .map_err(|e| draw_error(path, e))?;
        chart
            .configure_mesh()
            .x_desc(self.x_label)
            .y_desc(self.y_label)
            .x_label_formatter(&|v| tick(*v))
            .y_label_formatter(&|v| tick(*v))
            .label_style(("sans-serif", 15))
            .draw()
            .map_err(|e| draw_error(path, e))?;
        contents(&mut chart)?;
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 15))
            .draw()
            .map_err(|e| draw_error(path, e))?;
        root.present().map_err(|e| draw_error(path, e))
    }
}

fn draw_error(path: &Path, e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("cannot draw {}: {e}", path.display())
}

/// Overlaid histograms of several samples on shared bins, each normalized to its own size (the
/// y axis is the share of that series' values), with a dashed line at each series' mean.
#[derive(Debug, Clone)]
pub struct Histogram {
    pub title: String,
    pub x_label: String,
    /// `(label, values)`; non-finite values are left out.
    pub series: Vec<(String, Vec<f64>)>,
    pub bins: usize,
}

impl Histogram {
    /// Per series, the share of its values in each of `bins` equal bins over `range` (the last
    /// bin includes its right edge).
    pub fn shares(values: &[f64], range: &Range<f64>, bins: usize) -> Vec<f64> {
        let mut counts = vec![0usize; bins];
        let width = (range.end - range.start) / bins as f64;
        let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        for v in &finite {
            let i = (((v - range.start) / width).floor().max(0.0) as usize).min(bins - 1);
            counts[i] += 1;
        }
        let n = finite.len().max(1) as f64;
        counts.into_iter().map(|c| c as f64 / n).collect()
    }

    /// Draws the histograms to `path` (PNG), atomically.
    pub fn save_png(&self, path: &Path) -> Result<()> {
        crate::atomic::write_to_path(path, |tmp| self.draw_png(tmp, path))
    }

    fn draw_png(&self, file: &Path, path: &Path) -> Result<()> {
        register_font();
        ensure!(self.bins > 0, "a histogram needs at least one bin");
        let all = || {
            self.series
                .iter()
                .flat_map(|s| &s.1)
                .copied()
                .filter(|v| v.is_finite())
        };
        ensure!(
            all().next().is_some(),
            "{}: a histogram needs at least one value",
            path.display()
        );
        let x = padded(all(), 0.0);
        let shares: Vec<Vec<f64>> = self
            .series
            .iter()
            .map(|s| Self::shares(&s.1, &x, self.bins))
            .collect();
        let top = shares.iter().flatten().copied().fold(0.0, f64::max);
        let bins = Bins {
            start: x.start,
            width: (x.end - x.start) / self.bins as f64,
            top: top * 1.1,
        };
        let frame = Frame {
            title: &self.title,
            x_label: &self.x_label,
            y_label: "share of samples",
            x: x.clone(),
            y: 0.0..bins.top,
        };
        frame.draw(file, path, |chart| {
            for (k, shares) in shares.iter().enumerate() {
                self.draw_sample(chart, k, shares, &bins, path)?;
            }
            Ok(())
        })
    }

    /// Series `k`: filled bars of its `shares`, their outline, and a dashed line at its mean.
    fn draw_sample(
        &self,
        chart: &mut Chart<'_>,
        k: usize,
        shares: &[f64],
        bins: &Bins,
        path: &Path,
    ) -> Result<()> {
        let (label, values) = &self.series[k];
        let color = PALETTE[k % PALETTE.len()];
        let bars = shares.iter().enumerate().map(|(i, &s)| {
            let x0 = bins.start + i as f64 * bins.width;
            Rectangle::new([(x0, 0.0), (x0 + bins.width, s)], color.mix(0.35).filled())
        });
        chart
            .draw_series(bars)
            .map_err(|e| draw_error(path, e))?
            .label(label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 24, y + 6)], color.filled()));
        let outline = shares.iter().enumerate().flat_map(|(i, &s)| {
            let x0 = bins.start + i as f64 * bins.width;
            [(x0, s), (x0 + bins.width, s)]
        });
        chart
            .draw_series(LineSeries::new(outline, color.stroke_width(2)))
            .map_err(|e| draw_error(path, e))?;
        let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        if !finite.is_empty() {
            let mean = finite.iter().sum::<f64>() / finite.len() as f64;
            chart
                .draw_series(DashedLineSeries::new(
                    [(mean, 0.0), (mean, bins.top)],
                    8,
                    6,
                    color.stroke_width(2),
                ))
                .map_err(|e| draw_error(path, e))?;
        }
        Ok(())
    }
}

/// Where a histogram's bars stand: the first bin's left edge, the bins' width, and the top of
/// the y axis.
struct Bins {
    start: f64,
    width: f64,
    top: f64,
}

fn register_font() {
    static FONT: Once = Once::new();
    FONT.call_once(|| {
        let ok = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        )
        .is_ok();
        assert!(ok, "the embedded DejaVu Sans does not parse");
    });
}

/// The values' range widened by `share` of its width on each side (by 1 when all are equal), so
/// that points on the edge stay visible.
fn padded(values: impl Iterator<Item = f64>, share: f64) -> Range<f64> {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    let pad = if hi > lo { (hi - lo) * share } else { 1.0 };
    lo - pad..hi + pad
}

/// Tick labels without float noise: `4` rather than `4.000000000000001`.
fn tick(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_drop_float_noise() {
        assert_eq!(tick(4.000000000000001), "4");
        assert_eq!(tick(2.5), "2.5");
        assert_eq!(tick(-0.25), "-0.25");
        assert_eq!(tick(100.0), "100");
    }

    #[test]
    fn histogram_shares_sum_to_one_per_series() {
        let s = Histogram::shares(&[0.0, 0.5, 1.0, 1.0, f64::NAN], &(0.0..1.0), 2);
        assert_eq!(s, vec![0.25, 0.75]);
    }

    #[test]
    fn a_single_value_still_gets_a_range() {
        assert_eq!(padded([3.0].into_iter(), 0.1), 2.0..4.0);
        assert_eq!(padded([0.0, 10.0].into_iter(), 0.1), -1.0..11.0);
    }
}
