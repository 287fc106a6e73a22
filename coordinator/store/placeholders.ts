/**
 * Parameters one statement may bind on both drivers: the protocol carries the count in 16 bits (65,535)
 * and postgres.js refuses 65,534 or more.
 */
export const MAX_PARAMETERS = 65_533

/**
 * The `VALUES` list of a multi-row statement: `valuesPlaceholders(2, 3)` is
 * `($1, $2, $3), ($4, $5, $6)`; `start` shifts the numbering past parameters used earlier in the
 * statement. Pair it with the rows' values flattened in the same order (row by row). This is the
 * group-commit shape: one INSERT per tick, the same SQL on both drivers.
 */
export function valuesPlaceholders(rows: number, cols: number, start = 1): string {
  if (!Number.isInteger(rows) || rows < 1 || !Number.isInteger(cols) || cols < 1) {
    throw new RangeError(`valuesPlaceholders needs positive integers, got rows=${rows} cols=${cols}`)
  }
  if (!Number.isInteger(start) || start < 1) {
    throw new RangeError(`valuesPlaceholders: start must be a positive integer, got ${start}`)
  }
  const last = start - 1 + rows * cols
  if (last > MAX_PARAMETERS) {
    throw new RangeError(`valuesPlaceholders: $${last} is past the ${MAX_PARAMETERS}-parameter limit`)
  }
  const tuples: string[] = []
  let n = start
  for (let r = 0; r < rows; r++) {
    const cells: string[] = []
    for (let c = 0; c < cols; c++) cells.push(`$${n++}`)
    tuples.push(`(${cells.join(', ')})`)
  }
  return tuples.join(', ')
}
