//! Paging of the list RPCs: the page size a request may ask for and the opaque page tokens.
//!
//! Every list is ordered by a unique key (a node id, an account name, a task id, ...). A page
//! token is the key of the last item of the previous page, hex-encoded behind a `k` so that
//! clients treat it as opaque and it is never empty (an empty token means the first page, or
//! no next page, even when the key is the empty string); the next page starts after it. A store reads one item more than the page holds to
//! know whether another page follows ([`Page::finish`]).

use tonic::Status;

/// One page a request asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page {
    /// How many items the page holds at most.
    pub size: usize,
    /// The key the page starts after (`None`: from the start).
    pub after: Option<String>,
}

impl Page {
    /// The page a request asks for: `page_size` 0 means `default`, larger than `max` means
    /// `max`; a `page_token` that no page ever handed out is refused.
    pub fn of(page_size: u32, page_token: &str, default: u32, max: u32) -> Result<Page, Status> {
        let size = if page_size == 0 {
            default
        } else {
            page_size.min(max)
        };
        let after = if page_token.is_empty() {
            None
        } else {
            let foreign = || Status::invalid_argument("page_token is not one this service issued");
            let bytes = page_token
                .strip_prefix('k')
                .and_then(|hex_key| hex::decode(hex_key).ok())
                .ok_or_else(foreign)?;
            Some(String::from_utf8(bytes).map_err(|_| foreign())?)
        };
        Ok(Page {
            size: size.max(1) as usize,
            after,
        })
    }

    /// How many items to read: one more than the page holds, to learn whether more follow.
    pub fn read_limit(&self) -> i64 {
        self.size as i64 + 1
    }

    /// Whether an item with `key` comes after the page's start.
    pub fn starts_before(&self, key: &str) -> bool {
        self.after.as_deref().is_none_or(|after| key > after)
    }

    /// Cuts `items` (read in key order with [`Page::read_limit`]) to the page, and the token of
    /// the next page: empty when this is the last.
    pub fn finish<T, K: AsRef<str>>(
        &self,
        mut items: Vec<T>,
        key: impl Fn(&T) -> K,
    ) -> (Vec<T>, String) {
        if items.len() <= self.size {
            return (items, String::new());
        }
        items.truncate(self.size);
        let token = items
            .last()
            .map(|last| token_after(key(last).as_ref()))
            .unwrap_or_default();
        (items, token)
    }

    /// The page of `items` (all of them, in key order) this request asks for, and the next
    /// page's token: for lists a service holds in memory.
    pub fn slice<T: Clone, K: AsRef<str>>(
        &self,
        items: &[T],
        key: impl Fn(&T) -> K,
    ) -> (Vec<T>, String) {
        let rest: Vec<T> = items
            .iter()
            .filter(|item| self.starts_before(key(item).as_ref()))
            .take(self.size + 1)
            .cloned()
            .collect();
        self.finish(rest, key)
    }
}

/// Every item of a paged list, read page by page: `fetch` gets the page token to ask for and
/// returns the page's items and the next page's token. A service that answers an empty page
/// that is not the last, or the same token twice, is refused rather than followed forever.
pub async fn collect_pages<T, F, Fut>(mut fetch: F) -> Result<Vec<T>, Status>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<T>, String), Status>>,
{
    let mut items = Vec::new();
    let mut token = String::new();
    loop {
        let (page, next) = fetch(token.clone()).await?;
        if next.is_empty() {
            items.extend(page);
            return Ok(items);
        }
        if page.is_empty() || next == token {
            return Err(Status::internal(
                "the service's paging does not advance (an empty page, or the same token again)",
            ));
        }
        items.extend(page);
        token = next;
    }
}

/// The token of the page that starts after `key`.
pub fn token_after(key: &str) -> String {
    format!("k{}", hex::encode(key.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_cover_a_list_once_in_order() {
        let items: Vec<String> = (0..7).map(|i| format!("k{i}")).collect();
        let mut token = String::new();
        let mut seen = Vec::new();
        let mut pages = 0;
        loop {
            let page = Page::of(3, &token, 100, 1000).unwrap();
            let (got, next) = page.slice(&items, |s| s.clone());
            seen.extend(got);
            pages += 1;
            if next.is_empty() {
                break;
            }
            token = next;
        }
        assert_eq!(seen, items);
        assert_eq!(pages, 3);
        // A list that fills its last page exactly ends without an empty page.
        let (got, next) = Page::of(7, "", 100, 1000)
            .unwrap()
            .slice(&items, |s| s.clone());
        assert_eq!((got.len(), next.as_str()), (7, ""));
    }

    #[tokio::test]
    async fn collecting_pages_stops_at_the_last_and_refuses_paging_that_does_not_advance() {
        let items: Vec<String> = (0..5).map(|i| format!("k{i}")).collect();
        let all = collect_pages(|token| {
            let items = items.clone();
            async move { Ok(Page::of(2, &token, 2, 2)?.slice(&items, |s| s.clone())) }
        })
        .await
        .unwrap();
        assert_eq!(all, items);
        let stuck = collect_pages(|_| async { Ok((vec![1], "aa".to_string())) }).await;
        assert!(stuck.is_err());
        let empty = collect_pages(|_| async { Ok((Vec::<u8>::new(), "bb".to_string())) }).await;
        assert!(empty.is_err());
    }

    #[test]
    fn sizes_are_defaulted_and_capped_and_bad_tokens_refused() {
        assert_eq!(Page::of(0, "", 100, 1000).unwrap().size, 100);
        assert_eq!(Page::of(5000, "", 100, 1000).unwrap().size, 1000);
        let err = Page::of(1, "not hex", 100, 1000).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(Page::of(1, "kff", 100, 1000).is_err(), "not UTF-8");
        assert!(Page::of(1, "6e2d31", 100, 1000).is_err(), "no prefix");
        // The empty key has a token of its own: a list whose last key is "" goes on.
        assert_eq!(token_after(""), "k");
        assert_eq!(Page::of(1, "k", 1, 1).unwrap().after.as_deref(), Some(""));
        assert_eq!(
            Page::of(1, &token_after("n-1"), 1, 1)
                .unwrap()
                .after
                .as_deref(),
            Some("n-1")
        );
    }
}
