//! Loss plots drawn like the book's figure 5.12: training and validation loss against
//! epochs, with the number of tokens seen on a second x axis.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::register_font;

/// One evaluation point of a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossPoint {
    /// Fractional epoch (steps done / steps per epoch).
    pub epoch: f64,
    /// Tokens seen when evaluated.
    pub tokens_seen: u64,
    /// Training loss.
    pub train: f64,
    /// Validation loss.
    pub val: Option<f64>,
}

/// The font travels with the crate so plots have text on machines without fonts.
static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

fn ensure_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Registration only fails on a corrupt font, which the tests would show.
        let _ = register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// Draws the curves into a PNG at `path` (`title` on top). With fewer than two points
/// there is nothing to draw and no file is written.
pub fn plot_losses(
    path: &Path,
    title: &str,
    points: &[LossPoint],
    y_label: &str,
) -> Result<(), String> {
    if points.len() < 2 {
        return Ok(());
    }
    ensure_font();
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let max_epoch = points.iter().map(|p| p.epoch).fold(0.0, f64::max).max(1e-9);
    let max_tokens = points
        .iter()
        .map(|p| p.tokens_seen)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let values = points
        .iter()
        .flat_map(|p| std::iter::once(p.train).chain(p.val))
        .filter(|v| v.is_finite());
    let (lo, hi) = values.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let pad = ((hi - lo) * 0.05).max(1e-3);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(45)
        .top_x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_epoch, (lo - pad)..(hi + pad))
        .map_err(|e| e.to_string())?
        .set_secondary_coord(0.0..max_tokens, (lo - pad)..(hi + pad));
    chart
        .configure_mesh()
        .x_desc("Epochs")
        .y_desc(y_label)
        .draw()
        .map_err(|e| e.to_string())?;
    chart
        .configure_secondary_axes()
        .x_desc("Tokens seen")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(|e| e.to_string())?;
    let blue = RGBColor(31, 119, 180);
    let orange = RGBColor(255, 127, 14);
    chart
        .draw_series(LineSeries::new(
            points.iter().map(|p| (p.epoch, p.train)),
            blue.stroke_width(2),
        ))
        .map_err(|e| e.to_string())?
        .label(format!("Training {}", y_label.to_lowercase()))
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], blue.stroke_width(2)));
    let val: Vec<(f64, f64)> = points
        .iter()
        .filter_map(|p| p.val.map(|v| (p.epoch, v)))
        .collect();
    if !val.is_empty() {
        chart
            .draw_series(LineSeries::new(val, orange.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(format!("Validation {}", y_label.to_lowercase()))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], orange.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}

/// Draws `loss.png` (and `accuracy.png` when the run measured accuracies) from the
/// evaluation points of `metrics`; a plot that cannot be drawn is only a warning.
pub fn write_plots(dir: &crate::run_dir::RunDir, metrics: &[crate::metrics::MetricsLine]) {
    use crate::metrics::MetricsLine;
    let points = |pick: fn(&MetricsLine) -> (Option<f64>, Option<f64>)| -> Vec<LossPoint> {
        metrics
            .iter()
            .filter_map(|m| {
                let (train, val) = pick(m);
                train.map(|train| LossPoint {
                    epoch: m.epoch,
                    tokens_seen: m.tokens_seen,
                    train,
                    val,
                })
            })
            .collect()
    };
    let losses = points(|m| (m.eval_train_loss, m.val_loss));
    if let Err(e) = plot_losses(&dir.loss_plot(), "Loss", &losses, "Loss") {
        tracing::warn!(error = %e, "could not draw the loss plot");
    }
    let accuracies = points(|m| (m.train_accuracy, m.val_accuracy));
    if !accuracies.is_empty()
        && let Err(e) = plot_losses(&dir.accuracy_plot(), "Accuracy", &accuracies, "Accuracy")
    {
        tracing::warn!(error = %e, "could not draw the accuracy plot");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_png_of_the_expected_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loss.png");
        let points: Vec<LossPoint> = (0..10)
            .map(|i| LossPoint {
                epoch: i as f64 / 2.0,
                tokens_seen: i * 512,
                train: 10.0 - i as f64,
                val: Some(10.0 - i as f64 / 2.0),
            })
            .collect();
        plot_losses(&path, "Loss", &points, "Loss").unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        // IHDR: width and height, big-endian.
        assert_eq!(u32::from_be_bytes(bytes[16..20].try_into().unwrap()), 900);
        assert_eq!(u32::from_be_bytes(bytes[20..24].try_into().unwrap()), 560);
        // One point: nothing to draw, nothing written.
        let single = dir.path().join("one.png");
        plot_losses(&single, "Loss", &points[..1], "Loss").unwrap();
        assert!(!single.exists());
    }
}
