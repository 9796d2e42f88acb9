use crate::datasets::{ImageSource, Sample};
use crate::{DataError, Image};

/// Equal-sized images decoded once into one u8 buffer (CIFAR, STL-10, MNIST-like sets).
pub struct InMemoryImages {
    name: String,
    width: usize,
    height: usize,
    channels: usize,
    pixels: Vec<u8>,
    /// One label per image; `None` for unlabelled data.
    labels: Vec<Option<u16>>,
    num_classes: usize,
    class_names: Vec<String>,
}

impl InMemoryImages {
    /// `pixels` holds `labels.len()` HWC images of `width × height × channels`.
    pub fn new(
        name: impl Into<String>,
        (width, height, channels): (usize, usize, usize),
        pixels: Vec<u8>,
        labels: Vec<Option<u16>>,
        num_classes: usize,
    ) -> Self {
        assert_eq!(pixels.len(), labels.len() * width * height * channels);
        Self {
            name: name.into(),
            width,
            height,
            channels,
            pixels,
            labels,
            num_classes,
            class_names: Vec::new(),
        }
    }

    /// Names the classes (by label).
    pub fn with_class_names(mut self, names: Vec<String>) -> Self {
        self.class_names = names;
        self
    }

    /// Two sets of the same image size concatenated (e.g. STL-10 train + unlabeled).
    pub fn concat(mut self, other: InMemoryImages, name: impl Into<String>) -> Self {
        assert_eq!(
            (self.width, self.height, self.channels),
            (other.width, other.height, other.channels)
        );
        self.pixels.extend(other.pixels);
        self.labels.extend(other.labels);
        self.num_classes = self.num_classes.max(other.num_classes);
        self.name = name.into();
        self
    }

    /// The labels, in order (`None` for unlabelled images).
    pub fn labels(&self) -> &[Option<u16>] {
        &self.labels
    }
}

impl ImageSource for InMemoryImages {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn get(&self, index: usize) -> Result<Sample, DataError> {
        let size = self.width * self.height * self.channels;
        let pixels = self
            .pixels
            .get(index * size..(index + 1) * size)
            .ok_or_else(|| DataError::out_of_range(index, self.len(), &self.name))?;
        Ok(Sample {
            image: Image::new(self.width, self.height, self.channels, pixels.to_vec()),
            label: self.labels[index].map(usize::from),
        })
    }

    fn label(&self, index: usize) -> Option<usize> {
        self.labels.get(index).copied().flatten().map(usize::from)
    }

    fn num_classes(&self) -> usize {
        self.num_classes
    }

    fn class_names(&self) -> Vec<String> {
        self.class_names.clone()
    }

    fn channels(&self) -> usize {
        self.channels
    }

    fn item_name(&self, index: usize) -> String {
        format!("{}#{index}", self.name)
    }
}
