//! One byte budget per mount for the buffers that follow the workload: writers' part
//! buffers and readers' prefetched chunks. Without it, 64 files written at once can need
//! several GiB, and the OOM kill of the server is the "transport endpoint is not
//! connected" users report. Under pressure read-ahead shrinks first (prefetch only takes
//! what leaves a quarter of the budget free), then writers wait for buffers; nothing
//! fails for lack of memory.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Accounting unit: budgets are kept in KiB so a 5 GiB part fits one permit count.
const UNIT: u64 = 1024;

/// The budget of one mount; cheap to share.
#[derive(Clone)]
pub struct MemoryBudget {
    sem: Arc<Semaphore>,
    total_units: u32,
}

/// Bytes taken from a [`MemoryBudget`], given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    _permit: OwnedSemaphorePermit,
}

impl MemoryBudget {
    /// A budget of `bytes` (at least one unit).
    pub fn new(bytes: u64) -> MemoryBudget {
        let total_units = (bytes / UNIT).clamp(1, u64::from(u32::MAX >> 3)) as u32;
        MemoryBudget { sem: Arc::new(Semaphore::new(total_units as usize)), total_units }
    }

    /// Size of the budget, bytes.
    pub fn total(&self) -> u64 {
        u64::from(self.total_units) * UNIT
    }

    /// Bytes not reserved now.
    pub fn available(&self) -> u64 {
        self.sem.available_permits() as u64 * UNIT
    }

    fn units(&self, bytes: u64) -> u32 {
        // A request larger than the whole budget takes all of it rather than waiting forever.
        (bytes.div_ceil(UNIT)).clamp(1, u64::from(self.total_units)) as u32
    }

    /// Reserves `bytes`, waiting until others give enough back (a writer's next buffer).
    pub async fn reserve(&self, bytes: u64) -> Reservation {
        let permit =
            self.sem.clone().acquire_many_owned(self.units(bytes)).await.expect("the semaphore is never closed");
        Reservation { _permit: permit }
    }

    /// Reserves `bytes` for something optional (read-ahead) only if a quarter of the
    /// budget stays free afterwards for writers.
    pub fn try_reserve_optional(&self, bytes: u64) -> Option<Reservation> {
        let units = self.units(bytes);
        let floor = self.total_units / 4;
        if (self.sem.available_permits() as u64) < u64::from(units) + u64::from(floor) {
            return None;
        }
        self.sem.clone().try_acquire_many_owned(units).ok().map(|permit| Reservation { _permit: permit })
    }

    /// Reserves `bytes` if they are free now, without waiting (a read's own chunk).
    pub fn try_reserve(&self, bytes: u64) -> Option<Reservation> {
        self.sem.clone().try_acquire_many_owned(self.units(bytes)).ok().map(|permit| Reservation { _permit: permit })
    }

    /// Whether the budget is more than three quarters reserved: writers then give spare
    /// buffers back instead of keeping them for reuse.
    pub fn under_pressure(&self) -> bool {
        (self.sem.available_permits() as u64) < u64::from(self.total_units / 4)
    }
}

impl std::fmt::Debug for MemoryBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MemoryBudget({} of {} bytes free)", self.available(), self.total())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn writers_wait_for_what_others_give_back() {
        let b = MemoryBudget::new(16 << 20);
        let first = b.reserve(8 << 20).await;
        let _second = b.reserve(8 << 20).await;
        assert_eq!(b.available(), 0);
        let waiting = tokio::spawn({
            let b = b.clone();
            async move { b.reserve(8 << 20).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "reserved beyond the budget");
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), waiting).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn read_ahead_leaves_a_quarter_for_writers() {
        let b = MemoryBudget::new(64 << 20);
        let a = b.try_reserve_optional(40 << 20).expect("room");
        assert!(b.try_reserve_optional(9 << 20).is_none(), "would leave less than a quarter free");
        assert!(b.try_reserve_optional(8 << 20).is_some(), "leaves exactly a quarter");
        assert!(!b.under_pressure());
        let w = b.reserve(10 << 20).await;
        assert!(b.under_pressure(), "{b:?}");
        drop((a, w));
        assert!(!b.under_pressure());
    }

    #[tokio::test]
    async fn a_request_larger_than_the_budget_takes_all_of_it() {
        let b = MemoryBudget::new(4 << 20);
        let r = tokio::time::timeout(Duration::from_secs(1), b.reserve(64 << 20)).await.unwrap();
        assert_eq!(b.available(), 0);
        drop(r);
        assert_eq!(b.available(), 4 << 20);
    }
}
