//! Continual-learning summaries of the task-by-task accuracy matrix.

/// R[i][j] = test accuracy on task j after training through task i, for all
/// i, j < T — including j > i (accuracy on tasks not yet trained, the baseline
/// forward transfer is measured against).
///
/// Entries start as NaN so a summary computed before every needed entry was
/// set comes out NaN instead of silently counting a 0.
#[derive(Debug, Clone, PartialEq)]
pub struct AccuracyMatrix {
    tasks: usize,
    r: Vec<f64>,
}

impl AccuracyMatrix {
    /// # Panics
    /// If `tasks == 0`.
    pub fn new(tasks: usize) -> Self {
        assert!(tasks > 0, "AccuracyMatrix needs at least one task");
        Self { tasks, r: vec![f64::NAN; tasks * tasks] }
    }

    /// The matrix with row-major `entries` (as [`Self::entries`] gives them).
    ///
    /// # Panics
    /// If `entries` is not `tasks × tasks` long.
    pub fn from_entries(tasks: usize, entries: Vec<f64>) -> Self {
        assert_eq!(entries.len(), tasks * tasks, "an accuracy matrix of {tasks} tasks has {} entries", tasks * tasks);
        Self { tasks, r: entries }
    }

    /// Row-major entries, R[i][j] at `i·T + j`.
    pub fn entries(&self) -> &[f64] {
        &self.r
    }

    /// # Panics
    /// If `i` or `j` is not below the task count.
    pub fn set(&mut self, i: usize, j: usize, acc: f64) {
        let k = self.index(i, j);
        self.r[k] = acc;
    }

    /// # Panics
    /// If `i` or `j` is not below the task count.
    pub fn get(&self, i: usize, j: usize) -> f64 {
        self.r[self.index(i, j)]
    }

    /// Mean accuracy over all tasks after training on the last one.
    pub fn average_accuracy(&self) -> f64 {
        let last = self.tasks - 1;
        (0..self.tasks).map(|j| self.get(last, j)).sum::<f64>() / self.tasks as f64
    }

    /// BWT = 1/(T−1) Σ_{j<T−1} (R[T−1][j] − R[j][j]) (Lopez-Paz & Ranzato 2017):
    /// negative when later tasks erode earlier ones. 0 for a single task (nothing
    /// came after it).
    pub fn backward_transfer(&self) -> f64 {
        let last = self.tasks - 1;
        mean((0..last).map(|j| self.get(last, j) - self.get(j, j)))
    }

    /// Forgetting of each task j < T−1: max_{l<T−1} R[l][j] − R[T−1][j]
    /// (Chaudhry et al. 2018, "Riemannian Walk"). As in the paper the max runs
    /// over every earlier row, including rows before task j was trained.
    pub fn forgetting_per_task(&self) -> Vec<f64> {
        let last = self.tasks - 1;
        (0..last)
            .map(|j| {
                // Unlike f64::max, keeps a NaN (unset entry) instead of skipping it.
                let best = (0..last).map(|l| self.get(l, j)).fold(f64::NEG_INFINITY, |m, x| if x > m || x.is_nan() { x } else { m });
                best - self.get(last, j)
            })
            .collect()
    }

    /// Mean of [`Self::forgetting_per_task`]; 0 for a single task.
    pub fn forgetting(&self) -> f64 {
        mean(self.forgetting_per_task().into_iter())
    }

    fn index(&self, i: usize, j: usize) -> usize {
        assert!(i < self.tasks && j < self.tasks, "task ({i}, {j}) outside {0}×{0}", self.tasks);
        i * self.tasks + j
    }
}

/// Mean of the terms, 0 when there are none (T = 1: no earlier task to lose).
fn mean(terms: impl Iterator<Item = f64>) -> f64 {
    let (sum, count) = terms.fold((0.0, 0usize), |(s, c), x| (s + x, c + 1));
    if count == 0 { 0.0 } else { sum / count as f64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }

    /// Rows: after task 0, 1, 2; columns: evaluated task.
    fn three_tasks() -> AccuracyMatrix {
        let r = [[0.90, 0.10, 0.20], [0.60, 0.95, 0.15], [0.50, 0.70, 0.80]];
        let mut m = AccuracyMatrix::new(3);
        for (i, row) in r.iter().enumerate() {
            for (j, &a) in row.iter().enumerate() {
                m.set(i, j, a);
            }
        }
        m
    }

    #[test]
    fn hand_computed_three_by_three() {
        let m = three_tasks();
        close(m.get(1, 2), 0.15);
        close(m.average_accuracy(), (0.50 + 0.70 + 0.80) / 3.0);
        // ((0.50 − 0.90) + (0.70 − 0.95)) / 2
        close(m.backward_transfer(), -0.325);
        // Task 0: max(0.90, 0.60) − 0.50; task 1: max(0.10, 0.95) − 0.70.
        let f = m.forgetting_per_task();
        assert_eq!(f.len(), 2);
        close(f[0], 0.40);
        close(f[1], 0.25);
        close(m.forgetting(), 0.325);
    }

    #[test]
    fn max_over_earlier_rows_can_differ_from_diagonal() {
        // Task 0 peaks after task 1 (positive transfer), then drops.
        let mut m = three_tasks();
        m.set(1, 0, 0.97);
        close(m.forgetting_per_task()[0], 0.47);
        close(m.backward_transfer(), -0.325);
    }

    #[test]
    fn single_task_has_no_transfer_or_forgetting() {
        let mut m = AccuracyMatrix::new(1);
        m.set(0, 0, 0.8);
        close(m.average_accuracy(), 0.8);
        assert_eq!(m.backward_transfer(), 0.0);
        assert_eq!(m.forgetting(), 0.0);
        assert!(m.forgetting_per_task().is_empty());
    }

    #[test]
    fn unset_entries_propagate_as_nan() {
        let mut m = AccuracyMatrix::new(2);
        m.set(1, 0, 0.5);
        m.set(1, 1, 0.9);
        assert!(m.backward_transfer().is_nan());
        assert!(m.forgetting().is_nan());
        close(m.average_accuracy(), 0.7);
    }

    #[test]
    #[should_panic(expected = "outside 2×2")]
    fn out_of_range_panics() {
        AccuracyMatrix::new(2).get(2, 0);
    }
}
