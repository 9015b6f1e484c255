//! NumPy's legacy `RandomState` (MT19937), as far as the book's data splits need it:
//! `permutation(n)`, and so pandas' `sample(n, random_state=seed)`.
//!
//! Reproducing it lets Ember pick exactly the rows the book picks in chapter 6
//! (`create_balanced_dataset`, `random_split`), rather than only the same counts.

/// The Mersenne Twister MT19937 with NumPy's legacy integer seeding (`init_genrand`).
pub struct RandomState {
    state: [u32; 624],
    index: usize,
}

impl RandomState {
    /// `np.random.RandomState(seed)` for a seed below 2³².
    pub fn new(seed: u32) -> Self {
        let mut state = [0u32; 624];
        state[0] = seed;
        for i in 1..624 {
            state[i] = 1_812_433_253u32
                .wrapping_mul(state[i - 1] ^ (state[i - 1] >> 30))
                .wrapping_add(i as u32);
        }
        Self { state, index: 624 }
    }

    fn twist(&mut self) {
        for i in 0..624 {
            let y = (self.state[i] & 0x8000_0000) | (self.state[(i + 1) % 624] & 0x7fff_ffff);
            let mut next = self.state[(i + 397) % 624] ^ (y >> 1);
            if y & 1 != 0 {
                next ^= 0x9908_b0df;
            }
            self.state[i] = next;
        }
        self.index = 0;
    }

    /// The next 32 random bits (`genrand_int32`).
    pub fn next_u32(&mut self) -> u32 {
        if self.index >= 624 {
            self.twist();
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// A uniform integer in `0..=max` by masked rejection (`random_interval`).
    fn interval(&mut self, max: u32) -> u32 {
        if max == 0 {
            return 0;
        }
        let mut mask = max;
        for shift in [1, 2, 4, 8, 16] {
            mask |= mask >> shift;
        }
        loop {
            let value = self.next_u32() & mask;
            if value <= max {
                return value;
            }
        }
    }

    /// `permutation(n)`: `arange(n)` shuffled by Fisher–Yates from the end.
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut values: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = self.interval(i as u32) as usize;
            values.swap(i, j);
        }
        values
    }
}

/// pandas' `DataFrame.sample(n, random_state=seed)` without replacement: the row
/// positions it picks, in order.
pub fn pandas_sample(len: usize, n: usize, seed: u32) -> Vec<usize> {
    let mut rng = RandomState::new(seed);
    let mut picked = rng.permutation(len);
    picked.truncate(n);
    picked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_numpy_random_state() {
        // np.random.RandomState(123).randint(0, 2**32, dtype=np.uint64)[:3] draws the raw
        // 32-bit outputs; the reference MT19937 with init_genrand(5489) starts 3499211612.
        let mut rng = RandomState::new(5489);
        assert_eq!(rng.next_u32(), 3_499_211_612);
        assert_eq!(rng.next_u32(), 581_869_302);
        // np.random.RandomState(123).permutation(10)
        assert_eq!(
            RandomState::new(123).permutation(10),
            vec![4, 0, 7, 5, 8, 3, 1, 6, 9, 2]
        );
    }
}
