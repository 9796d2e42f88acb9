//! Shared by the integration tests: the real-data folder, when configured.

use std::path::PathBuf;

/// `$SCE_DATA_DIR` (CI: ../shared/data), or `None` with a printed notice so a user's clone
/// without the data still tests cleanly.
pub fn data_dir(test: &str) -> Option<PathBuf> {
    match std::env::var_os("SCE_DATA_DIR") {
        Some(dir) => Some(PathBuf::from(dir)),
        None => {
            eprintln!("skipping {test}: SCE_DATA_DIR is not set (real-data test)");
            None
        }
    }
}

/// The folder of real sample images (`samples/` of the data folder: CIFAR-10/100 PNGs and
/// 512-pixel ImageNet JPEGs named `<set>_<index>_<label>`). A user's clone has the datasets
/// (fetched by `cargo xtask ci`) but not these; then stand-ins with the same names and formats
/// are made once from the real Fashion-MNIST test images, with a printed notice.
#[allow(dead_code)]
pub fn samples_dir(data: &std::path::Path) -> PathBuf {
    let shared = data.join("samples");
    if shared.is_dir() {
        return shared;
    }
    static MADE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    MADE.get_or_init(|| {
        eprintln!(
            "note: {} is absent; making sample images from Fashion-MNIST instead",
            shared.display()
        );
        let dir = tempfile::tempdir().unwrap().keep();
        let test = sce_data::DatasetKind::FashionMnist
            .open(
                sce_data::Split::Test,
                &data.join("fashion-mnist"),
                &sce_data::OpenOptions::default(),
            )
            .unwrap();
        for i in 0..20 {
            let sample = test.get(i).unwrap();
            let label = sample.label.unwrap();
            let gray = image::GrayImage::from_raw(28, 28, sample.image.pixels).unwrap();
            // CIFAR: 32×32 RGB, the digit centred.
            let cifar = image::RgbImage::from_fn(32, 32, |x, y| {
                let v = if (2..30).contains(&x) && (2..30).contains(&y) {
                    gray.get_pixel(x - 2, y - 2)[0]
                } else {
                    0
                };
                image::Rgb([v, v / 2, 255 - v])
            });
            cifar
                .save(dir.join(format!("cifar10_{i:02}_{label}.png")))
                .unwrap();
            let fine = label * 10 + i % 10;
            cifar
                .save(dir.join(format!("cifar100_{i:02}_{fine}.png")))
                .unwrap();
            // ImageNet: a 512×512 RGB JPEG, one class per image.
            let big = image::imageops::resize(
                &image::DynamicImage::ImageLuma8(gray).to_rgb8(),
                512,
                512,
                image::imageops::FilterType::Triangle,
            );
            big.save(dir.join(format!("imagenet_{i:02}_{}.jpg", label * 100 + i)))
                .unwrap();
        }
        dir
    })
    .clone()
}
