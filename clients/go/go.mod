module github.com/pac-concurrency/pac-concurrency/clients/go

go 1.19
