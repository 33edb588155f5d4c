library(testthat)
library(scbridge)

test_check("scbridge")
