//! Installation-wide values.

use gradient_domain::ports::Storage;
use uuid::Uuid;

/// `meta_init` stores a value only when the key is unset, and always returns the value now stored.
pub async fn meta_init_keeps_the_first_value<S: Storage>(s: &S) {
    let key = format!("contract-{}", Uuid::new_v4());
    let other = format!("contract-{}", Uuid::new_v4());
    assert_eq!(s.meta(&key).await.expect("meta"), None, "an unset key");
    assert_eq!(
        s.meta_init(&key, "first").await.expect("meta_init"),
        "first",
        "the first value is stored"
    );
    assert_eq!(
        s.meta_init(&key, "second").await.expect("meta_init"),
        "first",
        "a second value is ignored"
    );
    assert_eq!(
        s.meta(&key).await.expect("meta"),
        Some("first".to_owned()),
        "the first value is kept"
    );
    assert_eq!(s.meta(&other).await.expect("meta"), None, "other keys stay unset");
    assert_eq!(
        s.meta_init(&other, "").await.expect("meta_init"),
        "",
        "an empty value is a value"
    );
    assert_eq!(
        s.meta_init(&other, "later").await.expect("meta_init"),
        "",
        "and is kept too"
    );
}
