//! A tiny RGB canvas with a PNG encoder (zlib via flate2) and a 3x5 digit font: enough for
//! heatmaps and line plots without a plotting stack.

use std::io::Write as _;
use std::path::Path;

use crate::error::{EvolveError, Result};

/// An RGB image.
pub struct Canvas {
    pub width: usize,
    pub height: usize,
    pixels: Vec<[u8; 3]>,
}

pub const WHITE: [u8; 3] = [255, 255, 255];
pub const BLACK: [u8; 3] = [0, 0, 0];
pub const GREY: [u8; 3] = [200, 200, 200];
/// Line colours per series.
pub const PALETTE: [[u8; 3]; 6] = [
    [31, 119, 180],
    [214, 39, 40],
    [44, 160, 44],
    [255, 127, 14],
    [148, 103, 189],
    [140, 86, 75],
];

/// Viridis-like colour for `t` in [0, 1].
pub fn colormap(t: f64) -> [u8; 3] {
    let stops: [[f64; 3]; 5] = [
        [68.0, 1.0, 84.0],
        [59.0, 82.0, 139.0],
        [33.0, 145.0, 140.0],
        [94.0, 201.0, 98.0],
        [253.0, 231.0, 37.0],
    ];
    let t = t.clamp(0.0, 1.0) * 4.0;
    let i = (t.floor() as usize).min(3);
    let f = t - i as f64;
    let c = |k: usize| (stops[i][k] + f * (stops[i + 1][k] - stops[i][k])).round() as u8;
    [c(0), c(1), c(2)]
}

const DIGITS: [[u8; 5]; 12] = [
    [0b111, 0b101, 0b101, 0b101, 0b111],
    [0b010, 0b110, 0b010, 0b010, 0b111],
    [0b111, 0b001, 0b111, 0b100, 0b111],
    [0b111, 0b001, 0b111, 0b001, 0b111],
    [0b101, 0b101, 0b111, 0b001, 0b001],
    [0b111, 0b100, 0b111, 0b001, 0b111],
    [0b111, 0b100, 0b111, 0b101, 0b111],
    [0b111, 0b001, 0b010, 0b010, 0b010],
    [0b111, 0b101, 0b111, 0b101, 0b111],
    [0b111, 0b101, 0b111, 0b001, 0b111],
    [0b000, 0b000, 0b000, 0b000, 0b010], // '.'
    [0b000, 0b000, 0b111, 0b000, 0b000], // '-'
];

impl Canvas {
    pub fn new(width: usize, height: usize) -> Self {
        Self {
            width,
            height,
            pixels: vec![WHITE; width * height],
        }
    }

    pub fn set(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < self.width && (y as usize) < self.height {
            self.pixels[y as usize * self.width + x as usize] = c;
        }
    }

    pub fn rect(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, c: [u8; 3]) {
        for y in y0.min(y1)..y0.max(y1) {
            for x in x0.min(x1)..x0.max(x1) {
                self.set(x, y, c);
            }
        }
    }

    /// A line (Bresenham), `thick` pixels wide.
    pub fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), c: [u8; 3], thick: i64) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        loop {
            for ox in 0..thick {
                for oy in 0..thick {
                    self.set(x + ox - thick / 2, y + oy - thick / 2, c);
                }
            }
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    /// Writes digits, '.' and '-' at (x, y), `scale` pixels per font pixel.
    pub fn text(&mut self, x: i64, y: i64, s: &str, c: [u8; 3], scale: i64) {
        let mut cx = x;
        for ch in s.chars() {
            let glyph = match ch {
                '0'..='9' => Some(DIGITS[ch as usize - '0' as usize]),
                '.' => Some(DIGITS[10]),
                '-' => Some(DIGITS[11]),
                _ => None,
            };
            if let Some(g) = glyph {
                for (row, bits) in g.iter().enumerate() {
                    for col in 0..3 {
                        if bits & (0b100 >> col) != 0 {
                            self.rect(
                                cx + col * scale,
                                y + row as i64 * scale,
                                cx + (col + 1) * scale,
                                y + (row as i64 + 1) * scale,
                                c,
                            );
                        }
                    }
                }
            }
            cx += 4 * scale;
        }
    }

    /// Encodes as PNG (8-bit RGB).
    pub fn to_png(&self) -> Vec<u8> {
        let mut raw = Vec::with_capacity(self.height * (1 + 3 * self.width));
        for row in self.pixels.chunks(self.width) {
            raw.push(0);
            for p in row {
                raw.extend_from_slice(p);
            }
        }
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        let _ = z.write_all(&raw);
        let idat = z.finish().unwrap_or_default();
        let mut out = vec![0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&(self.width as u32).to_be_bytes());
        ihdr.extend_from_slice(&(self.height as u32).to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
        chunk(&mut out, b"IHDR", &ihdr);
        chunk(&mut out, b"IDAT", &idat);
        chunk(&mut out, b"IEND", &[]);
        out
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        swarm_model::write_atomic(path, &self.to_png()).map_err(|e| EvolveError::RunDir {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &b in bytes {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// A heatmap of a 2-D grid (`None` cells grey), values mapped over [lo, hi]; row 0 at the
/// bottom. Cell values are printed when cells are large enough.
pub fn heatmap(grid: &[Vec<Option<f64>>], lo: f64, hi: f64, cell: usize) -> Canvas {
    let rows = grid.len();
    let cols = grid.first().map_or(0, |r| r.len());
    let margin = 8;
    let mut c = Canvas::new(cols * cell + 2 * margin, rows * cell + 2 * margin);
    for (r, row) in grid.iter().enumerate() {
        for (col, v) in row.iter().enumerate() {
            let x0 = (margin + col * cell) as i64;
            let y0 = (margin + (rows - 1 - r) * cell) as i64;
            let colour = match v {
                Some(v) => colormap(if hi > lo { (v - lo) / (hi - lo) } else { 0.5 }),
                None => [235, 235, 235],
            };
            c.rect(x0, y0, x0 + cell as i64 - 1, y0 + cell as i64 - 1, colour);
            if let Some(v) = v {
                if cell >= 30 {
                    let t = format!("{:.0}", v * 100.0);
                    let fg = if (v - lo) / (hi - lo).max(1e-9) > 0.6 {
                        BLACK
                    } else {
                        WHITE
                    };
                    c.text(x0 + 3, y0 + 3, &t, fg, 2);
                }
            }
        }
    }
    c
}

/// Line plot of several series over x = 0..n, y over [lo, hi], with axes.
pub fn line_plot(series: &[Vec<f64>], width: usize, height: usize) -> Canvas {
    let mut c = Canvas::new(width, height);
    let (ml, mr, mt, mb) = (50i64, 10i64, 10i64, 30i64);
    let (w, h) = (width as i64 - ml - mr, height as i64 - mt - mb);
    let n = series.iter().map(|s| s.len()).max().unwrap_or(0).max(2);
    let all = series.iter().flatten().copied().filter(|v| v.is_finite());
    let (mut lo, mut hi) = all.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    if !lo.is_finite() || !hi.is_finite() {
        (lo, hi) = (0.0, 1.0);
    }
    lo = lo.min(0.0);
    if hi - lo < 1e-9 {
        hi = lo + 1.0;
    }
    for i in 0..=4 {
        let y = mt + h - h * i / 4;
        c.line((ml, y), (ml + w, y), GREY, 1);
        c.text(
            2,
            y - 5,
            &format!("{:.2}", lo + (hi - lo) * i as f64 / 4.0),
            BLACK,
            2,
        );
    }
    c.line((ml, mt), (ml, mt + h), BLACK, 1);
    c.line((ml, mt + h), (ml + w, mt + h), BLACK, 1);
    c.text(ml, mt + h + 8, "0", BLACK, 2);
    let last = format!("{}", n - 1);
    c.text(ml + w - 8 * last.len() as i64, mt + h + 8, &last, BLACK, 2);
    for (k, s) in series.iter().enumerate() {
        let colour = PALETTE[k % PALETTE.len()];
        let pt = |i: usize, v: f64| {
            (
                ml + (w as f64 * i as f64 / (n - 1) as f64) as i64,
                mt + h - (h as f64 * (v - lo) / (hi - lo)) as i64,
            )
        };
        for i in 1..s.len() {
            c.line(pt(i - 1, s[i - 1]), pt(i, s[i]), colour, 2);
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_has_signature_and_valid_crc() {
        assert_eq!(crc32(b"IEND"), 0xae42_6082);
        let png = heatmap(
            &[vec![Some(0.1), None], vec![Some(0.5), Some(0.9)]],
            0.0,
            1.0,
            32,
        )
        .to_png();
        assert_eq!(&png[1..4], b"PNG");
        assert_eq!(&png[png.len() - 8..png.len() - 4], b"IEND");
    }
}
