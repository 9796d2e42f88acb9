//! A 2-D convolution by its definition, in float64: the reference the kernels' tests and
//! `sce-train check` both measure against.

use super::geometry::ConvGeometry;

/// The output of a convolution and, for the loss `Σ y·dy`, the gradients of its input and
/// weight, all in float64.
pub struct ConvReference {
    pub y: Vec<f64>,
    pub dx: Vec<f64>,
    pub dw: Vec<f64>,
}

/// `g`'s convolution of `x` with `w` by its definition, and with `dy` (the upstream gradient,
/// of the output's length) the input and weight gradients; without it they are empty.
pub fn conv2d_f64(g: &ConvGeometry, x: &[f32], w: &[f32], dy: Option<&[f32]>) -> ConvReference {
    let [kh, kw] = g.kernel;
    let mut y = vec![0.0f64; g.output_len()];
    let (mut dx, mut dw) = match dy {
        Some(_) => (vec![0.0f64; x.len()], vec![0.0f64; w.len()]),
        None => (Vec::new(), Vec::new()),
    };
    for b in 0..g.batch {
        for co in 0..g.c_out {
            for oy in 0..g.out_h {
                for ox in 0..g.out_w {
                    let yi = ((b * g.c_out + co) * g.out_h + oy) * g.out_w + ox;
                    for ci in 0..g.c_in {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (oy * g.stride[0] + ky) as isize - g.padding[0] as isize;
                                let ix = (ox * g.stride[1] + kx) as isize - g.padding[1] as isize;
                                if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                                    continue;
                                }
                                let xi =
                                    ((b * g.c_in + ci) * g.h + iy as usize) * g.w + ix as usize;
                                let wi = ((co * g.c_in + ci) * kh + ky) * kw + kx;
                                y[yi] += x[xi] as f64 * w[wi] as f64;
                                if let Some(dy) = dy {
                                    dw[wi] += dy[yi] as f64 * x[xi] as f64;
                                    dx[xi] += dy[yi] as f64 * w[wi] as f64;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    ConvReference { y, dx, dw }
}
