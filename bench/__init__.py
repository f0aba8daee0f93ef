"""`make bench`: benchmarks that print a table. Each section is a module with
`async def run(quick: bool) -> list[Row]`."""
