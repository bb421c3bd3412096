//! The accuracy plot of `hedge eval`.

use super::eval::CaseReport;
use super::{BackendError, Result};
use std::path::Path;

/// The paper's figures 4 and 5 in one PNG: accuracy per variant (float, reference, encrypted)
/// and reference accuracy per quantisation width. Needs a TrueType font (DejaVu Sans, Debian's
/// fonts-dejavu-core).
pub fn accuracy(reports: &[CaseReport], path: &Path) -> Result<()> {
    use plotters::prelude::*;
    let font = [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    ]
    .iter()
    .find_map(|p| std::fs::read(p).ok())
    .ok_or_else(|| {
        BackendError::Plot("no DejaVu Sans font (apt-get install fonts-dejavu-core)".into())
    })?;
    let font: &'static [u8] = Box::leak(font.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, font)
        .map_err(|_| BackendError::Plot("unreadable font".into()))?;
    let fail = |e: &dyn std::fmt::Display| BackendError::Plot(format!("{}: {e}", path.display()));

    let root = BitMapBackend::new(path, (1200, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let (left, right) = root.split_horizontally(600);
    let lo = reports
        .iter()
        .flat_map(|r| [r.float_accuracy, r.reference_accuracy, r.encrypted_accuracy])
        .chain(
            reports
                .iter()
                .flat_map(|r| r.width_sweep.iter().map(|w| w.1)),
        )
        .fold(1.0f64, f64::min);
    let floor = ((lo * 100.0 - 5.0).floor() / 100.0).clamp(0.0, 0.95);

    let n = reports.len();
    let mut bars = ChartBuilder::on(&left)
        .caption("Test accuracy per variant", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(60)
        .y_label_area_size(50)
        .build_cartesian_2d(-0.5..n as f64 - 0.5, floor..1.0)
        .map_err(|e| fail(&e))?;
    // Bars of case i are centred on x = i, where the integer ticks fall.
    bars.configure_mesh()
        .disable_x_mesh()
        .x_labels(n.max(1))
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 {
                reports
                    .get(i as usize)
                    .map(|r| r.case.clone())
                    .unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc("accuracy")
        .draw()
        .map_err(|e| fail(&e))?;
    type Series = (&'static str, RGBColor, fn(&CaseReport) -> f64);
    let series: [Series; 3] = [
        ("float", RGBColor(90, 90, 90), |r| r.float_accuracy),
        ("integer reference", BLUE, |r| r.reference_accuracy),
        ("encrypted (fixed-seed sample)", RED, |r| {
            r.encrypted_accuracy
        }),
    ];
    for (k, &(name, color, value)) in series.iter().enumerate() {
        bars.draw_series(reports.iter().enumerate().map(|(i, r)| {
            let x0 = i as f64 - 0.35 + k as f64 * 0.24;
            Rectangle::new([(x0, floor), (x0 + 0.2, value(r))], color.filled())
        }))
        .map_err(|e| fail(&e))?
        .label(name)
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    bars.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| fail(&e))?;

    let widths: Vec<u32> = reports
        .iter()
        .flat_map(|r| r.width_sweep.iter().map(|w| w.0))
        .collect();
    let (wmin, wmax) = (
        widths.iter().copied().min().unwrap_or(2),
        widths.iter().copied().max().unwrap_or(10),
    );
    let mut lines = ChartBuilder::on(&right)
        .caption(
            "Integer reference vs quantisation width",
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(wmin as f64..wmax as f64, floor..1.0)
        .map_err(|e| fail(&e))?;
    lines
        .configure_mesh()
        .x_desc("bits (inputs, weights, activations)")
        .y_desc("accuracy")
        .draw()
        .map_err(|e| fail(&e))?;
    for (i, r) in reports.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        lines
            .draw_series(LineSeries::new(
                r.width_sweep.iter().map(|&(b, a)| (b as f64, a)),
                color.stroke_width(2),
            ))
            .map_err(|e| fail(&e))?
            .label(r.case.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
            });
    }
    lines
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|e| fail(&e))?;
    root.present().map_err(|e| fail(&e))?;
    Ok(())
}
