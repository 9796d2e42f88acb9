//! Text in pictures needs a TrueType font. None is bundled: the first common system font found
//! is registered with plotters as "sans-serif"; without one, pictures are drawn unlabelled.

use plotters::style::FontStyle;

const FONT_PATHS: [&str; 6] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "/Library/Fonts/Arial.ttf",
    "C:\\Windows\\Fonts\\arial.ttf",
];

/// Whether a font is registered (looked for once per process).
pub fn sans_serif() -> bool {
    static FOUND: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FOUND.get_or_init(|| {
        FONT_PATHS.iter().any(|path| {
            std::fs::read(path).ok().is_some_and(|bytes| {
                plotters::style::register_font(
                    "sans-serif",
                    FontStyle::Normal,
                    Box::leak(bytes.into_boxed_slice()),
                )
                .is_ok()
            })
        })
    })
}
