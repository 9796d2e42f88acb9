//! Folder discovery gives the data the user meant: stray files are ignored with a note,
//! non-UTF-8 names are kept, symbolic-link loops do not multiply images, and validation
//! classes are matched to training classes by name.

use std::path::Path;

use sce_data::{DatasetKind, ImageSource, OpenOptions, Split};

fn image(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::new(4, 4).save(path).unwrap();
}

fn open(root: &Path, split: Split) -> Result<std::sync::Arc<dyn ImageSource>, String> {
    DatasetKind::Folder
        .open(split, root, &OpenOptions::default())
        .map_err(|e| e.to_string())
}

fn labels(set: &dyn ImageSource) -> Vec<Option<usize>> {
    (0..set.len()).map(|i| set.get(i).unwrap().label).collect()
}

#[test]
fn a_stray_file_beside_class_folders_is_ignored_with_a_note() {
    let dir = tempfile::tempdir().unwrap();
    let train = dir.path().join("train");
    image(&train.join("cat/a.png"));
    image(&train.join("dog/b.png"));
    std::fs::write(train.join("README.txt"), "about these images").unwrap();
    std::fs::write(train.join("dog/labels.csv"), "b,dog").unwrap();
    let set = open(dir.path(), Split::Train).unwrap();
    assert_eq!(set.num_classes(), 2, "still labelled by class folders");
    assert_eq!(labels(set.as_ref()), [Some(0), Some(1)]);
    let notes = set.notes();
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(
        notes[0].contains("ignored 2 file(s)") && notes[0].contains("README.txt"),
        "{notes:?}"
    );
}

/// An image lying directly beside the class folders has no class: it is left out with its own
/// note, and the set stays labelled (it used to make the whole folder unlabelled).
#[test]
fn a_stray_image_beside_class_folders_keeps_the_set_labelled() {
    let dir = tempfile::tempdir().unwrap();
    let train = dir.path().join("train");
    image(&train.join("cat/a.png"));
    image(&train.join("dog/b.png"));
    image(&train.join("stray.png"));
    let set = open(dir.path(), Split::Train).unwrap();
    assert_eq!(set.num_classes(), 2);
    assert_eq!(labels(set.as_ref()), [Some(0), Some(1)]);
    let notes = set.notes().join("\n");
    assert!(
        notes.contains("ignored 1 image(s)") && notes.contains("stray.png"),
        "{notes}"
    );
}

#[cfg(unix)]
#[test]
fn non_utf8_names_are_kept_and_symlink_loops_listed_once() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let train = dir.path().join("train");
    let odd = train.join(std::ffi::OsStr::from_bytes(b"caf\xe9"));
    image(&odd.join("a.png"));
    image(&train.join("dog/b.png"));
    image(&train.join("dog/inner/c.png"));
    // A loop back to the class folder, and a second link to the same folder.
    std::os::unix::fs::symlink(train.join("dog"), train.join("dog/inner/loop")).unwrap();
    std::os::unix::fs::symlink(train.join("dog/inner"), train.join("dog/again")).unwrap();
    let set = open(dir.path(), Split::Train).unwrap();
    assert_eq!(set.num_classes(), 2, "the non-UTF-8 class is not dropped");
    assert_eq!(
        set.len(),
        3,
        "each image once: {:?}",
        (0..set.len()).map(|i| set.item_name(i)).collect::<Vec<_>>()
    );
    assert_eq!(labels(set.as_ref()), [Some(0), Some(1), Some(1)]);
    let notes = set.notes().join("\n");
    assert!(
        notes.contains("already listed") && notes.contains("symbolic"),
        "{notes}"
    );
}

/// A link that leads out of its class folder would label another class's images (or images
/// from anywhere) with this class: it is refused, naming the link. A link to an image of the
/// same class is followed, and the image listed once.
#[cfg(unix)]
#[test]
fn a_link_out_of_its_class_is_refused_not_relabelled() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let train = dir.path().join("train");
    image(&train.join("a/x.png"));
    image(&train.join("b/y.png"));
    image(&train.join("b/z.png"));
    symlink(train.join("b/z.png"), train.join("b/same-class.png")).unwrap();
    let set = open(dir.path(), Split::Train).unwrap();
    assert_eq!(labels(set.as_ref()), [Some(0), Some(1), Some(1)]);

    // `ln -s .. train/a/loop`: class a would reach train/b through it.
    symlink("..", train.join("a/loop")).unwrap();
    let err = open(dir.path(), Split::Train).err().unwrap();
    assert!(
        err.contains("a/loop") && err.contains("outside its class folder") && !err.contains("  "),
        "{err}"
    );
    std::fs::remove_file(train.join("a/loop")).unwrap();

    // One image of class b linked into class a.
    symlink(train.join("b/y.png"), train.join("a/borrowed.png")).unwrap();
    let err = open(dir.path(), Split::Train).err().unwrap();
    assert!(
        err.contains("a/borrowed.png") && err.contains("outside its class folder"),
        "{err}"
    );
}

#[test]
fn validation_classes_are_matched_to_training_classes_by_name() {
    let dir = tempfile::tempdir().unwrap();
    for class in ["cat", "dog", "fox"] {
        image(&dir.path().join(format!("train/{class}/t.png")));
    }
    // val/ lacks `cat`: `dog` and `fox` keep their training labels 1 and 2.
    image(&dir.path().join("val/dog/v.png"));
    image(&dir.path().join("val/fox/v.png"));
    let val = open(dir.path(), Split::Test).unwrap();
    assert_eq!(val.num_classes(), 3);
    assert_eq!(labels(val.as_ref()), [Some(1), Some(2)]);

    // A class only in val/ is an error naming it.
    image(&dir.path().join("val/wolf/v.png"));
    let err = open(dir.path(), Split::Test).err().unwrap();
    assert!(
        err.contains("`wolf`") && err.contains("training classes"),
        "{err}"
    );
}

/// A class-list subset (ImageNet-100 over ImageNet): training holds exactly the listed classes,
/// labelled in sorted order, and each must exist; validation keeps the listed classes it has
/// (others are ignored, a missing one is fine).
#[test]
fn a_class_list_selects_and_labels_the_subset() {
    let dir = tempfile::tempdir().unwrap();
    for class in ["cat", "dog", "fox"] {
        image(&dir.path().join(format!("train/{class}/t.png")));
    }
    image(&dir.path().join("val/dog/v.png"));
    image(&dir.path().join("val/fox/v.png"));
    let list = dir.path().join("classes.txt");
    std::fs::write(&list, "dog\ncat\n").unwrap();
    let options = OpenOptions {
        class_list: Some(list.clone()),
        ..OpenOptions::default()
    };
    let train = DatasetKind::Imagenet100
        .open(Split::Train, dir.path(), &options)
        .unwrap();
    assert_eq!(train.num_classes(), 2);
    assert_eq!(labels(train.as_ref()), [Some(0), Some(1)], "cat, dog");
    let val = DatasetKind::Imagenet100
        .open(Split::Test, dir.path(), &options)
        .unwrap();
    assert_eq!(
        labels(val.as_ref()),
        [Some(1)],
        "dog only; fox is not listed"
    );

    std::fs::write(&list, "dog\nwolf\n").unwrap();
    let err = DatasetKind::Imagenet100
        .open(Split::Train, dir.path(), &options)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("class wolf"), "{err}");
}
